"""The Grafana dashboard's PromQL against live data: `exo-otel demo` serving metrics through the
Prometheus exporter, scraped every second by a real Prometheus; every panel query must parse and,
unless listed in EXPECTED_EMPTY with a reason, return at least one finite value."""

from __future__ import annotations

import math
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from subprocess import Popen
from typing import Any

import pytest

from helpers.demo_helpers import demo_command, demo_env
from helpers.deploy_checks import (
    free_port,
    in_ci,
    instant_query,
    load_dashboard,
    prometheus_binary,
    rendered_dashboard_queries,
    start_prometheus,
)

RUNS = 6
TRIGGER_INTERVAL_S = 0.4
"""Spreads the runs over several 1 s scrapes, so rate() sees counters grow between two samples."""
HOLD_S = 40.0
"""Upper bound only: the test ends the hold with SIGTERM once the queries have answered."""
DATA_TIMEOUT_S = 20.0
SCRAPES_START_TIMEOUT_S = 15.0
DEMO_EXIT_TIMEOUT_S = 15.0

EXPECTED_EMPTY = {
    "Prune rate by node": "the demo graph never prunes, so no series has exosphere_state_outcome=pruned "
    "and the numerator (hence the ratio) is an empty vector; it still has to parse",
}

TRIGGERED = 'sum(exosphere_trigger_count_total{exosphere_namespace="exo-otel-demo"})'

SCRAPE_CONFIG = """\
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: exo-otel-demo
    scrape_interval: 1s
    scrape_timeout: 900ms
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""


@pytest.fixture
def prometheus_available() -> None:
    if prometheus_binary() is None:
        message = "prometheus is not installed (scripts/install-test-deps.sh installs it)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)


def _wait_for_first_scrape(url: str) -> None:
    # Prometheus applies new targets on a 5 s tick; the demo must start only once scrapes happen,
    # or all its runs would be over before the first sample and every rate() would be 0.
    deadline = time.monotonic() + SCRAPES_START_TIMEOUT_S
    while not instant_query(url, 'up{job="exo-otel-demo"}').get("data", {}).get("result"):
        assert time.monotonic() < deadline, "prometheus did not start scraping"
        time.sleep(0.2)


@pytest.fixture
def demo_serving_metrics(tmp_path: Path, prometheus_available: None) -> Iterator[tuple[str, Popen[str]]]:
    """A Prometheus scraping the demo, which holds after its runs; (Prometheus URL, demo process)."""
    port = free_port()
    url, stop_prometheus = start_prometheus(SCRAPE_CONFIG.format(port=port), tmp_path)
    try:
        _wait_for_first_scrape(url)
    except BaseException:
        stop_prometheus()
        raise
    output = (tmp_path / "demo.out").open("w", encoding="utf-8")
    env = demo_env(OTEL_EXPORTER_PROMETHEUS_HOST="127.0.0.1", OTEL_EXPORTER_PROMETHEUS_PORT=str(port))
    demo = subprocess.Popen(
        # With the state manager side: the run panels read its metrics (exosphere.run.cpu_time).
        [*demo_command(), "demo", "--prometheus", "--server-side", "--runs", str(RUNS),
         "--interval", str(TRIGGER_INTERVAL_S), "--hold", str(HOLD_S)],
        stdout=output, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
    )
    try:
        yield url, demo
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        output.close()
        stop_prometheus()


def _finite_values(answer: dict[str, Any]) -> list[float]:
    result = answer.get("data", {}).get("result", [])
    return [v for series in result if not math.isnan(v := float(series["value"][1]))]


def _problems(url: str) -> dict[str, str]:
    """What is still wrong with each dashboard query, by panel and expression; empty when all is well."""
    problems = {}
    for title, expr in rendered_dashboard_queries():
        answer = instant_query(url, expr)
        if answer.get("status") != "success":
            problems[f"{title}: {expr}"] = f"does not evaluate: {answer.get('error')}"
        elif title not in EXPECTED_EMPTY and not _finite_values(answer):
            problems[f"{title}: {expr}"] = f"no finite value yet: {answer['data']['result']}"
    return problems


def _variable_queries() -> list[tuple[str, str]]:
    """label_values(metric, label) of each dashboard variable, as PromQL that lists the label's values."""
    queries = []
    for variable in load_dashboard().get("templating", {}).get("list", []):
        definition = variable.get("definition", "")
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", definition)
        if match:
            selector = re.sub(r'=~"\$\w+"', '=~".*"', match.group(1))
            queries.append((variable["name"], f"group by ({match.group(2)}) ({selector})"))
    return queries


def test_every_dashboard_query_returns_data_from_the_demo(
    demo_serving_metrics: tuple[str, Popen[str]], tmp_path: Path
) -> None:
    url, demo = demo_serving_metrics
    deadline = time.monotonic() + DATA_TIMEOUT_S
    # First every run is in a sample, then every query has had the data it needs.
    while _finite_values(instant_query(url, TRIGGERED)) != [RUNS] and time.monotonic() < deadline:
        assert demo.poll() is None, (tmp_path / "demo.out").read_text(encoding="utf-8")
        time.sleep(0.5)
    while (problems := _problems(url)) and time.monotonic() < deadline:
        assert demo.poll() is None, (tmp_path / "demo.out").read_text(encoding="utf-8")
        time.sleep(0.5)
    assert not problems, "\n".join(f"{query}\n    {why}" for query, why in problems.items())

    for title in EXPECTED_EMPTY:  # these must still name real panels
        assert title in {t for t, _ in rendered_dashboard_queries()}, f"no panel {title!r} any more"
    for name, query in _variable_queries():
        answer = instant_query(url, query)
        assert answer["status"] == "success" and answer["data"]["result"], (name, query, answer)
    assert _finite_values(instant_query(url, TRIGGERED)) == [RUNS]

    # SIGTERM ends the hold (only the hold: before it, it stops the demo like any program).
    hold_deadline = time.monotonic() + DATA_TIMEOUT_S
    while "holding" not in (tmp_path / "demo.out").read_text(encoding="utf-8"):
        assert demo.poll() is None and time.monotonic() < hold_deadline, "the demo did not reach its hold"
        time.sleep(0.1)
    demo.send_signal(signal.SIGTERM)
    assert demo.wait(DEMO_EXIT_TIMEOUT_S) == 0, (tmp_path / "demo.out").read_text(encoding="utf-8")
    output = (tmp_path / "demo.out").read_text(encoding="utf-8")
    assert output.count("finished: SUCCESS") == RUNS
