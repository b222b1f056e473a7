"""Cross-process tracing: two instrumented runtime processes serving different nodes, one trace per run."""

from __future__ import annotations

import collections
import json
import subprocess
from pathlib import Path

import pytest

from exo_otel.core.ids import format_trace_id, run_span_id, state_span_id
from exo_otel_demo.embedded import EmbeddedStateManager
from helpers import conformance_graph as cg
from helpers.otlp_receiver import OtlpHttpReceiver, Span
from helpers.proc_runtime import launch, otel_env, print_logs, stop

# Each node lives in exactly one runtime, so the per-process retry/re-enqueue counters are deterministic.
RUNTIME_A = ["StartNode", "AuditNode", "AuditLogNode", "PrepNode", "SplitNode"]
RUNTIME_B = ["WorkNode", "MergeNode", "FlakyNode", "FinishNode"]
RUNS = 2
TIMEOUT = 40.0


def _hex(span_id: int) -> str:
    return format(span_id, "016x")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("expose_run_context", [True, False], ids=["payload", "run_api"])
def test_every_span_of_a_run_lands_in_its_one_trace(expose_run_context: bool, tmp_path: Path) -> None:
    mode = "payload" if expose_run_context else "run_api"
    processes: list[subprocess.Popen[str]] = []
    with OtlpHttpReceiver() as rx, EmbeddedStateManager(expose_run_context=expose_run_context) as sm:
        try:
            for name, nodes in (("runtime-a", RUNTIME_A), ("runtime-b", RUNTIME_B)):
                env = otel_env(rx.endpoint, name, OTEL_PYTHON_EXOSPHERE_PLACEMENT=mode)
                args = ["--uri", sm.uri, f"--key={sm.api_key}", "--namespace", cg.NAMESPACE,
                        "--nodes", ",".join(nodes), "--name", name]
                processes.append(launch("proc_runtime.py", args, env, tmp_path / f"{name}.log"))
            rx.wait_for(lambda _: set(RUNTIME_A + RUNTIME_B) <= sm.registered_nodes(cg.NAMESPACE), TIMEOUT)

            args = ["--uri", sm.uri, f"--key={sm.api_key}", "--graph", "conformance", "--runs", str(RUNS)]
            env = otel_env(rx.endpoint, "trigger")
            trigger = launch("proc_trigger.py", args, env, tmp_path / "trigger.log", stdout=subprocess.PIPE)
            processes.append(trigger)
            out, _ = trigger.communicate(timeout=TIMEOUT)
            assert trigger.returncode == 0
            run_ids: list[str] = json.loads(out)

            rx.wait_for(lambda _: all(sm.run_status(r) not in (None, "PENDING") for r in run_ids), TIMEOUT)
            expected = {r: {_hex(state_span_id(s.id)) for s in sm.states(r)} for r in run_ids}
            names = {_hex(state_span_id(s.id)): s.identifier for r in run_ids for s in sm.states(r)}
            names.update({_hex(run_span_id(r)): ("trigger", r) for r in run_ids})
            # Every state's span, and the trigger span, have arrived (exported after the final outcome).
            try:
                rx.wait_for(lambda _: not _missing(rx.spans(), expected), TIMEOUT)
            except AssertionError as error:
                missing = {names[i] for lost in _missing(rx.spans(), expected).values() for i in lost}
                raise AssertionError(f"missing spans: {missing}") from error
        finally:
            for process in processes:
                stop(process)
            print_logs(tmp_path)  # shown by pytest when the test fails

        spans = rx.spans()  # everything, now that every process has flushed at exit
        for run_id in run_ids:
            assert sm.run_status(run_id) == "SUCCESS"
            _assert_one_trace(spans, run_id, expected[run_id])
        counts = collections.Counter(span.span_id for span in spans)
        assert [sid for sid, n in counts.items() if n > 1] == [], "a span id was emitted twice"


def _missing(spans: list[Span], expected: dict[str, set[str]]) -> dict[str, set[str]]:
    """Per run, the state and trigger span ids not yet received in the run's trace."""
    missing = {}
    for run_id, state_ids in expected.items():
        got = {span.span_id for span in spans if span.trace_id == format_trace_id(run_id)}
        if lost := (state_ids | {_hex(run_span_id(run_id))}) - got:
            missing[run_id] = lost
    return missing


def _assert_one_trace(spans: list[Span], run_id: str, state_span_ids: set[str]) -> None:
    trace_id = format_trace_id(run_id)
    in_trace = [span for span in spans if span.trace_id == trace_id]
    # Nothing of the run lives outside its trace: no state's node span (its id is the state's) and no
    # execute span under one, and no span naming the run.
    strays = [
        s for s in spans
        if s.trace_id != trace_id
        and (s.span_id in state_span_ids or s.parent_span_id in state_span_ids
             or s.attributes.get("exosphere.run.id") == run_id)
    ]
    assert strays == []

    roots = [span for span in in_trace if span.parent_span_id is None]
    assert [(r.name, r.span_id, r.service_name) for r in roots] == [
        (f"trigger {cg.GRAPH}", _hex(run_span_id(run_id)), "trigger")
    ]
    root = roots[0].span_id
    by_id = {span.span_id: span for span in in_trace}
    nodes = [span for span in in_trace if span.name.startswith("node ")]
    assert {span.span_id for span in nodes} == state_span_ids
    assert all(span.parent_span_id == root for span in nodes)
    assert {span.service_name for span in nodes} == {"runtime-a", "runtime-b"}
    executes = [span for span in in_trace if span.name.startswith("execute ")]
    assert all(by_id[span.parent_span_id].name.startswith("node ") for span in executes)  # type: ignore[index]
    # One execute per executed state, and one more for work #2, which was re-enqueued once. (Fan-out
    # copies of split's outputs are states with a node span that no runtime executes.)
    assert len(executes) == len({span.parent_span_id for span in executes}) + 1
    # Every span of the trace hangs off the trigger span.
    for span in in_trace:
        hops = span
        while hops.parent_span_id is not None:
            assert hops.parent_span_id in by_id, f"{span.name} has a parent outside the trace"
            hops = by_id[hops.parent_span_id]
        assert hops.span_id == root
