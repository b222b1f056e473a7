"""`exo-otel demo` as a user runs it: a subprocess, its printed runs, links and waterfalls."""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from exo_otel import format_trace_id
from exo_otel_demo.graph import ITEMS_PER_RUN
from exo_otel_demo.run import NOT_EXPORTED_NOTE
from exo_otel_demo.waterfall import ERROR_MARK, render_waterfall
from helpers.demo_helpers import demo_env, parse_report, run_demo, triggered_run_ids
from helpers.sm_fixtures import free_port

GRAPH_SPANS = {
    "trigger score-batch": 0,
    "node fetch": 2,
    "execute FetchBatch": 4,
    "node split": 2,
    "node split (copy)": 2,
    "execute SplitBatch": 4,
    "node score": 2,
    "node score (retry 1)": 2,
    "execute ScoreItem": 4,
    "node merge": 2,
    "execute MergeScores": 4,
    "node publish": 2,
    "execute PublishReport": 4,
}
"""Span name -> indentation in the waterfall (root, node spans under it, execute spans under those)."""

SIDE_SPANS = {**{name: 2 for name in GRAPH_SPANS}, "run score-batch": 0, "settle score-batch": 2}
SIDE_SPANS.update({name: 4 for name in GRAPH_SPANS if name.startswith("execute ")})
"""With ``--server-side``: the server's ``run`` is the root; the client's ``trigger``, the node spans
and the run's outcome ``settle`` are under it, the execute spans under the node spans."""

def test_demo_prints_each_run_with_its_trace_and_waterfall(tmp_path: Path) -> None:
    env = demo_env(EXO_OTEL_JAEGER_URL="http://jaeger.example:16686/",
                   EXO_OTEL_GRAFANA_URL="https://grafana.example")
    result = run_demo(env=env, cwd=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    ids = triggered_run_ids(result.stdout)
    assert len(ids) == 3 and len(set(ids)) == 3  # the default is three runs
    for index, run_id in enumerate(ids, start=1):
        assert f"[{index}/3] run {run_id} finished: SUCCESS" in result.stdout
    report = parse_report(result.stdout)
    assert [run.fields["run id"] for run in report] == ids
    for run in report:
        run_id, trace_id = run.fields["run id"], run.fields["trace id"]
        assert trace_id == format_trace_id(run_id)
        assert run.fields["run status"] == "SUCCESS"
        # The spans stayed in memory: no link to a Jaeger or Grafana that never got them.
        assert "jaeger" not in run.fields and "grafana" not in run.fields
        assert_waterfall(run.rows)
    assert NOT_EXPORTED_NOTE in result.stdout
    assert "http://jaeger.example" not in result.stdout and "flushing" not in result.stdout
    # The runtime's log of the planned failure is hidden; the waterfall shows it instead.
    assert "ScoringError" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_demo_with_the_state_manager_side_shows_the_runs_root_and_outcome(tmp_path: Path) -> None:
    result = run_demo("--runs", "2", "--server-side", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "with exo_otel's state manager side" in result.stdout
    report = parse_report(result.stdout)
    assert [run.fields["run id"] for run in report] == triggered_run_ids(result.stdout)
    for run in report:
        assert run.fields["trace id"] == format_trace_id(run.fields["run id"])
        assert run.fields["run status"] == "SUCCESS"  # read from the settle span
        assert_waterfall(run.rows, server_side=True)
    assert "ScoringError" not in result.stderr


def assert_waterfall(rows: list[tuple[int, str, str]], server_side: bool = False) -> None:
    names = Counter(name for _indent, name, _mark in rows)
    shape = SIDE_SPANS if server_side else GRAPH_SPANS
    assert set(names) == set(shape), names
    for indent, name, _mark in rows:
        assert indent == shape[name], (indent, name)
    # One trigger, one state each for fetch, merge, publish; four items plus one retry. The fan-out
    # leaves split with copies of its state (one per extra output), each with a node span of its own,
    # marked "(copy)", and no execute span: one split state executed, one split node span per item.
    assert names["trigger score-batch"] == 1
    if server_side:  # the root first; the outcome after the nodes it sums up (the run succeeded)
        assert names["run score-batch"] == names["settle score-batch"] == 1
        assert rows[0][1] == "run score-batch" and rows[-1][1:] == ("settle score-batch", "")
    # Item #2 fails once: its retry is a new state, labelled as the retry it is.
    assert names["node score"] == ITEMS_PER_RUN and names["node score (retry 1)"] == 1
    assert names["execute ScoreItem"] == ITEMS_PER_RUN + 1
    assert names["node split"] == names["execute SplitBatch"] == 1
    assert names["node split (copy)"] == ITEMS_PER_RUN - 1
    for index, (_indent, name, _mark) in enumerate(rows):
        if name == "node split (copy)":  # nothing under a copy: the next row is not deeper
            assert index + 1 == len(rows) or rows[index + 1][0] <= rows[index][0], rows[index + 1]
    for single, cls in (("fetch", "FetchBatch"), ("merge", "MergeScores"), ("publish", "PublishReport")):
        assert names[f"node {single}"] == names[f"execute {cls}"] == 1
    failed = [(name, mark) for _indent, name, mark in rows if mark]
    # The server's node span has no exception at hand: the state's status says what failed.
    node_failure = "RETRY_CREATED" if server_side else "exo_otel_demo.graph.ScoringError"
    assert failed == [
        ("node score", f"{ERROR_MARK} {node_failure}"),
        ("execute ScoreItem", f"{ERROR_MARK} exo_otel_demo.graph.ScoringError"),
    ]
    # The failed execute sits under the failed node span: the row right after it.
    first_failed = next(i for i, row in enumerate(rows) if row[2])
    assert rows[first_failed + 1][1:] == ("execute ScoreItem", failed[1][1])


def test_demo_runs_option(tmp_path: Path) -> None:
    result = run_demo("--runs", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(triggered_run_ids(result.stdout)) == 1
    assert len(parse_report(result.stdout)) == 1


def test_demo_rejects_bad_options_with_status_2() -> None:
    for args in (("--runs", "0"), ("--runs", "x"), ("--hold", "-1")):
        result = run_demo(*args)
        assert result.returncode == 2, args
        assert "usage:" in result.stderr


def test_demo_rejects_an_unknown_otlp_protocol() -> None:
    env = demo_env(
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", OTEL_EXPORTER_OTLP_PROTOCOL="carrier-pigeon"
    )
    result = run_demo(env=env)
    assert result.returncode == 2
    assert "carrier-pigeon" in result.stdout + result.stderr


def test_with_the_collector_down_the_demo_says_it_is_flushing_and_exits(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there: the collector is down
    for protocol in ("grpc", "http/protobuf"):
        env = demo_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}", OTEL_EXPORTER_OTLP_PROTOCOL=protocol
        )
        started = time.monotonic()
        # The subprocess timeout only guards against a hang; the time is printed (pytest -s), not asserted.
        result = run_demo("--runs", "1", env=env, cwd=tmp_path, timeout=30)
        elapsed = time.monotonic() - started
        assert result.returncode == 0, result.stdout + result.stderr
        flushing = f"flushing spans and metrics to http://127.0.0.1:{port} ..."
        assert flushing in result.stdout
        report = result.stdout.split(flushing, 1)[1]
        undelivered = rf"could not deliver \d+ spans to http://127.0.0.1:{port} \([\d.]+ s\)"
        assert re.search(undelivered, report), report
        flush_s = float(re.findall(r"\(([\d.]+) s\)", report)[0])
        print(f"collector down ({protocol}): demo exited after {elapsed:.1f} s, flush took {flush_s:.1f} s")


def test_the_waterfall_draws_a_failed_runs_outcome_last_with_its_status() -> None:
    """The state manager side's shape, failed: spans made as the side makes them (no exception at
    hand, error.type _OTHER), drawn with the outcome after the nodes and the statuses as marks."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    t0 = 1_700_000_000_000_000_000
    ms = 1_000_000
    root = tracer.start_span("run g", start_time=t0, kind=trace.SpanKind.PRODUCER)
    root.end(t0 + ms)
    under_root = trace.set_span_in_context(root)
    outcome = tracer.start_span(
        "settle g", context=under_root, start_time=t0,
        attributes={"exosphere.run.status": "FAILED", "error.type": "_OTHER"},
    )
    node = tracer.start_span(
        "node work", context=under_root, start_time=t0 + ms,
        attributes={"exosphere.state.status": "ERRORED", "error.type": "_OTHER"},
    )
    execute = tracer.start_span(
        "execute Work", context=trace.set_span_in_context(node), start_time=t0 + 2 * ms,
        attributes={"error.type": "RuntimeError"},
    )
    for span, end in ((execute, 3), (node, 4), (outcome, 5)):
        span.set_status(Status(StatusCode.ERROR))
        span.end(t0 + end * ms)
    provider.shutdown()
    lines = render_waterfall(exporter.get_finished_spans()).splitlines()[1:]
    rows = [(len(line) - len(line.lstrip()), line.split("|")[0].strip(), line.rsplit("ms", 1)[1].strip())
            for line in lines]
    assert rows == [
        (0, "run g", ""),
        (2, "node work", f"{ERROR_MARK} ERRORED"),
        (4, "execute Work", f"{ERROR_MARK} RuntimeError"),
        (2, "settle g", f"{ERROR_MARK} FAILED"),  # started first, drawn last: the run's outcome
    ]
