"""Helpers to check the deployable stack under deploy/: file loading, the dashboard's queries and a
throwaway local Prometheus to evaluate them against."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = REPO_ROOT / "deploy"
STACK_DIR = DEPLOY_DIR / "jaeger"
COMPOSE_FILE = STACK_DIR / "docker-compose.yml"
DASHBOARD_FILE = STACK_DIR / "grafana" / "dashboards" / "exosphere-runs.json"
DATASOURCES_FILE = STACK_DIR / "grafana" / "provisioning" / "datasources" / "datasources.yaml"
DASHBOARD_SCHEMA_FILE = Path(__file__).resolve().parent / "schemas" / "grafana-dashboard.schema.json"

PROMETHEUS_STARTUP_TIMEOUT_S = 30.0
PROMETHEUS_STOP_TIMEOUT_S = 10.0

# What Grafana puts in place of its own variables when the tests evaluate a query. Dashboard
# variables are added from the dashboard itself (see template_values).
GRAFANA_BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "5m",
    "__tags": 'exosphere_node_name="ScoreItem"',
}

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def load_compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE_FILE)
    assert isinstance(data, dict)
    return data


def load_dashboard(path: Path = DASHBOARD_FILE) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY_DIR.rglob("*") if p.suffix in {".yml", ".yaml"} and p.is_file())


def iter_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def is_prometheus(ref: dict[str, Any] | None, default_uid: str = "prometheus") -> bool:
    return bool(ref) and (ref.get("type") == "prometheus" or ref.get("uid") == default_uid)


def dashboard_queries(dashboard: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """(panel title, PromQL expression) for every Prometheus target of the dashboard, as written."""
    dashboard = dashboard if dashboard is not None else load_dashboard()
    queries = []
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            ref = target.get("datasource") or panel.get("datasource")
            if is_prometheus(ref) and target.get("expr"):
                queries.append((panel["title"], target["expr"]))
    return queries


def template_values(dashboard: dict[str, Any] | None = None) -> dict[str, str]:
    """A value for each dashboard variable: the all-value for multi-value ones, a dummy otherwise."""
    dashboard = dashboard if dashboard is not None else load_dashboard()
    values = dict(GRAFANA_BUILTINS)
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("includeAll"):
            values[variable["name"]] = variable.get("allValue") or ".*"
        else:
            values[variable["name"]] = "00000000-0000-4000-8000-000000000000"
    return values


def render(expr: str, values: dict[str, str]) -> str:
    """Replace $var, ${var} and ${var:format} as Grafana would (unknown variables are left alone)."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return values.get(name, match.group(0))

    return _VARIABLE.sub(substitute, expr)


def rendered_dashboard_queries() -> list[tuple[str, str]]:
    dashboard = load_dashboard()
    values = template_values(dashboard)
    return [(title, render(expr, values)) for title, expr in dashboard_queries(dashboard)]


def metric_names(expr: str) -> set[str]:
    """Series names a PromQL expression selects (names written before a `{` matcher block)."""
    return set(re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{", expr)) - {"by", "without", "on", "ignoring"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def _get_json(url: str, timeout: float = 5.0) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as error:
        # Prometheus answers bad queries with 400/422 and a JSON body that says why.
        body = error.read()
    data = json.loads(body)
    assert isinstance(data, dict)
    return data


def start_prometheus(
    config_text: str, tmp_path: Path, extra_args: tuple[str, ...] = ()
) -> tuple[str, Callable[[], None]]:
    """Start a local Prometheus with `config_text` on a free 127.0.0.1 port.

    Returns its base URL and a function that stops it (idempotent). Raises RuntimeError when it is
    not ready within PROMETHEUS_STARTUP_TIMEOUT_S; the process is stopped before raising.
    """
    binary = prometheus_binary()
    if binary is None:
        raise RuntimeError("prometheus is not installed (scripts/install-test-deps.sh installs it)")
    config = tmp_path / "prometheus.yml"
    config.write_text(config_text, encoding="utf-8")
    storage = tmp_path / "tsdb"
    storage.mkdir(exist_ok=True)
    log = (tmp_path / "prometheus.log").open("wb")
    address = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={storage}",
            f"--web.listen-address={address}",
            "--enable-feature=exemplar-storage",
            *extra_args,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://{address}"

    def stop() -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=PROMETHEUS_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()

    deadline = time.monotonic() + PROMETHEUS_STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stop()
            tail = (tmp_path / "prometheus.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"prometheus exited early: {tail}")
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1.0) as response:
                if response.status == 200:
                    return url, stop
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    stop()
    raise RuntimeError(f"prometheus not ready after {PROMETHEUS_STARTUP_TIMEOUT_S} s")


def instant_query(url: str, expr: str) -> dict[str, Any]:
    """The JSON answer of /api/v1/query (status, and data or errorType/error)."""
    return _get_json(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")


EMPTY_PROMETHEUS_CONFIG = """\
global:
  scrape_interval: 15s
scrape_configs: []
"""
