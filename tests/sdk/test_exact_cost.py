"""benchmarks/exact_cost.py measures something: its measured call, run natively (no Valgrind) for one group
of executions per kind, really executes the states, and exo_otel and the SDK floor really make the same
spans and the same metric records (so the floor is the floor of what exo_otel does)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from exo_otel.core import attributes as attr
from exo_otel.core import metrics

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "exact_cost.py"
EXECUTIONS = 48  # one group: 16 runs of the 3-node chain
KINDS = ("embedded", "side")
PARTS = ("plain-spans", "floor-spans", "floor-metrics", "exo-spans", "exo-metrics")
PER_STATE_METRICS = {metrics.NODE_QUEUE_WAIT, metrics.NODE_DURATION, metrics.NODE_EXECUTIONS} | (
    {metrics.NODE_CPU_TIME} if hasattr(metrics, "NODE_CPU_TIME") else set()
)


def _windows(part: str, floor_parents: bool = False) -> dict[str, Any]:
    """One part's windows, with CPU time on (exo_otel's fullest shape: one more attribute and record per
    state, which the floor must make too)."""
    mode, signals = part.split("-")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "EXOSPHERE_"))}
    env["EXO_OTEL_EXACT_CPU_TIME"] = "1"  # as --cpu-time sets it for the children
    # --floor-parents (the default): the floor makes its spans' parents and links itself.
    env["EXO_OTEL_EXACT_FLOOR_PARENTS"] = "1" if floor_parents else "0"
    done = subprocess.run(
        [sys.executable, str(BENCHMARK), "--child", mode, "--signals", signals,
         "--executions", str(EXECUTIONS), "--warmup", str(EXECUTIONS), "--check"],
        capture_output=True, text=True, timeout=90, env=env, check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["part"] == part
    return {kind: report["windows"][f"{kind} {EXECUTIONS}"] for kind in KINDS}


@pytest.fixture(scope="module")
def windows() -> dict[str, dict[str, Any]]:
    return {part: _windows(part) for part in PARTS}


def _shapes(window: dict[str, Any]) -> Counter[str]:
    return Counter(
        json.dumps({k: v for k, v in shape.items() if k != "trace_id"}, sort_keys=True)
        for shape in window["span_shapes"]
    )


def _points(window: dict[str, Any]) -> Counter[tuple[str, str]]:
    """Records per (instrument, attribute set); the in-flight gauge is observed at collection, not
    recorded."""
    return Counter({
        (point["name"], json.dumps(point["attributes"], sort_keys=True)): point["count"]
        for point in window["points"]
        if point["name"] != metrics.RUNTIME_INFLIGHT
    })


def test_every_part_executes_and_reports_every_state(windows: dict[str, dict[str, Any]]) -> None:
    for part, by_kind in windows.items():
        for kind, window in by_kind.items():
            assert window["executions"] == EXECUTIONS, (part, kind)
            assert window["polls"] == EXECUTIONS // 16, (part, kind)
            # The runtime's own records: one per poll, three per executed state.
            assert len(window["log_lines"]) == window["polls"] + 3 * EXECUTIONS, (part, kind)


def test_the_uninstrumented_part_makes_no_telemetry(windows: dict[str, dict[str, Any]]) -> None:
    for window in windows["plain-spans"].values():
        assert window["spans"] == 0 and window["span_shapes"] == [] and window["points"] == []


def test_exo_otel_makes_the_spans_of_the_trace_model(windows: dict[str, dict[str, Any]]) -> None:
    for signals in ("spans", "metrics"):
        embedded, side = windows[f"exo-{signals}"]["embedded"], windows[f"exo-{signals}"]["side"]
        # Without the carrier the runtime makes node and execute spans; with the state manager side's,
        # the server makes the node spans and the runtime the execute spans under them.
        assert embedded["spans"] == 2 * EXECUTIONS
        assert side["spans"] == EXECUTIONS
        names = Counter(shape["name"].split()[0] for shape in embedded["span_shapes"])
        assert names == {"node": EXECUTIONS, "execute": EXECUTIONS}
        assert {shape["name"].split()[0] for shape in side["span_shapes"]} == {"execute"}
        shapes = embedded["span_shapes"] + side["span_shapes"]
        executes = [s for s in shapes if s["name"].startswith("execute")]
        assert all(s["status"] == "OK" and s["kind"] == "CONSUMER" for s in executes)
        nodes = [s for s in embedded["span_shapes"] if s["name"].startswith("node")]
        # The second and third node of each chain link to their upstream state's node span.
        assert Counter(s["links"] for s in nodes) == {0: EXECUTIONS // 3, 1: 2 * EXECUTIONS // 3}
        assert all(attr.STATE_OUTCOME in s["attributes"] for s in nodes)
        # 16 runs, one trace each.
        assert len({s["trace_id"] for s in embedded["span_shapes"]}) == 16


def test_the_floor_makes_the_same_spans_and_records_as_exo_otel(windows: dict[str, dict[str, Any]]) -> None:
    for signals in ("spans", "metrics"):
        for kind in KINDS:
            exo, floor = windows[f"exo-{signals}"][kind], windows[f"floor-{signals}"][kind]
            assert floor["spans"] == exo["spans"], (signals, kind)
            assert _shapes(floor) == _shapes(exo), (signals, kind)
            traces = {s["trace_id"] for s in exo["span_shapes"]}
            assert {s["trace_id"] for s in floor["span_shapes"]} == traces, (signals, kind)
            assert _points(floor) == _points(exo), (signals, kind)


def test_the_floor_making_its_parents_makes_the_same_spans_and_records(
    windows: dict[str, dict[str, Any]],
) -> None:
    for signals in ("spans", "metrics"):
        made = _windows(f"floor-{signals}", floor_parents=True)
        for kind in KINDS:
            exo, floor = windows[f"exo-{signals}"][kind], made[kind]
            assert floor["executions"] == EXECUTIONS, (signals, kind)
            assert _shapes(floor) == _shapes(exo), (signals, kind)
            traces = {s["trace_id"] for s in exo["span_shapes"]}
            assert {s["trace_id"] for s in floor["span_shapes"]} == traces, (signals, kind)
            assert _points(floor) == _points(exo), (signals, kind)


def test_with_metrics_every_state_is_recorded(windows: dict[str, dict[str, Any]]) -> None:
    for part in ("exo-metrics", "floor-metrics"):
        for kind, window in windows[part].items():
            totals: Counter[str] = Counter()
            for (name, _attributes), count in _points(window).items():
                totals[name] += count
            assert {name: totals[name] for name in PER_STATE_METRICS} == dict.fromkeys(
                PER_STATE_METRICS, EXECUTIONS), (part, kind)
            assert totals[metrics.RUNTIME_POLL_DURATION] == window["polls"], (part, kind)
            # The histograms recorded with the execute span current carry exemplars (a sampled run).
            assert any(p["exemplars"] for p in window["points"] if p["name"] == metrics.NODE_DURATION)
    for part in ("exo-spans", "floor-spans"):
        for window in windows[part].values():
            assert window["points"] == []


def test_exo_otels_log_records_carry_the_run(windows: dict[str, dict[str, Any]]) -> None:
    correlated = re.compile(r"\[[0-9a-f]{32} [0-9a-f]{16} [0-9a-f-]{36}\] (Executing|Got outputs|Notified)")
    for window in windows["exo-metrics"].values():
        assert sum(1 for line in window["log_lines"] if correlated.search(line)) == 3 * EXECUTIONS
    for window in windows["floor-metrics"].values():
        assert not any(correlated.search(line) for line in window["log_lines"])
