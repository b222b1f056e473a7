"""Shared steps of the runtime tracing tests: run the conformance graph traced, and label its spans."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from exo_otel.core.ids import trace_id_for_run
from exo_otel_demo.embedded import EmbeddedStateManager
from helpers import conformance_graph as cg
from helpers.sm_fixtures import running_runtime, sdk_state_manager, wait_for_run, wait_until

# The trace of one conformance run (strict mode): audit prunes, split fans out into three work
# states (two are copies no runtime executes), work #2 is re-enqueued once, flaky fails twice.
EXPECTED_RUN_TREE = """\
trigger conformance
  node audit [pruned]
    execute AuditNode [pruned]
  node finish [executed]
    execute FinishNode [status OK]
  node flaky [errored] builtins.RuntimeError
    execute FlakyNode [errored] builtins.RuntimeError
  node flaky [errored] builtins.RuntimeError
    execute FlakyNode [errored] builtins.RuntimeError
  node flaky [executed]
    execute FlakyNode [status OK]
  node merge [executed]
    execute MergeNode [status OK]
  node prep [executed]
    execute PrepNode [status OK]
  node split [executed]
    execute SplitNode [status OK]
  node split [executed] (fan-out copy)
  node split [executed] (fan-out copy)
  node start [executed]
    execute StartNode [status OK]
  node work [executed]
    execute WorkNode [status OK]
  node work [executed]
    execute WorkNode [status OK]
  node work [executed]
    execute WorkNode [requeued]
    execute WorkNode [status OK]"""

SPANS_PER_RUN = EXPECTED_RUN_TREE.count("\n") + 1


def label(span: ReadableSpan) -> str:
    attributes = span.attributes or {}
    outcome = attributes.get("exosphere.state.outcome")
    if outcome is None and span.status.status_code is StatusCode.OK:
        outcome = "status OK"  # an executed attempt's execute span: its status says it
    text = f"{span.name} [{outcome}]"
    if "error.type" in attributes:
        text += f" {attributes['error.type']}".replace(" RuntimeError", " builtins.RuntimeError")
    if "exosphere.state.fanout_of" in attributes:
        text += " (fan-out copy)"
    return text if span.name.startswith(("node", "execute")) else span.name


def run_spans(spans: Sequence[ReadableSpan], run_id: str) -> list[ReadableSpan]:
    return [s for s in spans if s.context is not None and s.context.trace_id == trace_id_for_run(run_id)]


async def run_conformance_graph(
    sm: EmbeddedStateManager, exporter: InMemorySpanExporter, topic: str, workers: int = 4
) -> tuple[str, list[ReadableSpan]]:
    """Register, upsert and trigger the conformance graph once; its run id and trace, complete."""
    async with running_runtime(sm, cg.NAMESPACE, cg.NODES, workers=workers):
        client = sdk_state_manager(sm, cg.NAMESPACE)
        await cg.upsert(client)
        run_id = (await client.trigger(cg.GRAPH, store={"topic": topic}))["run_id"]
        assert await wait_for_run(sm, run_id) == "SUCCESS"
        # The worker ends its spans just after reporting, which may be after the run is done.
        await wait_until(lambda: len(run_spans(exporter.get_finished_spans(), run_id)) >= SPANS_PER_RUN)
    return run_id, run_spans(exporter.get_finished_spans(), run_id)
