"""Every state a runtime executes lands in its run's trace: the tree, links, outcomes, placement modes."""

from __future__ import annotations

import uuid

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from exo_otel.core.ids import run_span_id, state_span_id, trace_id_for_run
from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from exo_otel_demo.embedded import EmbeddedStateManager
from helpers.otel_fixtures import instrumented
from helpers.runtime_tracing import EXPECTED_RUN_TREE, label, run_conformance_graph
from helpers.span_tree import dump_tree
from helpers.trace_checks import flatten, integrity

# What the runtime's spans may carry (docs/trace-model.md, section "Attributes"): nothing the trace
# says already (the trace id names the run, the span name the node, the parent the state).
NODE_KEYS = {
    "exosphere.state.id", "exosphere.node.name", "exosphere.state.outcome", "exosphere.state.retry_count",
    "exosphere.state.fanout_of", "error.type",
}
EXECUTE_KEYS = {
    "exosphere.state.outcome", "exosphere.state.queue_wait_ms", "messaging.system",
    "messaging.operation.type", "messaging.operation.name", "error.type", "exosphere.execution.cpu_time",
}


def assert_complete_trace(spans: list[ReadableSpan], run_id: str) -> None:
    references = integrity(flatten(spans))
    assert references.whole, references.problems
    [root] = [s for s in spans if s.parent is None]
    assert root.context is not None and root.context.span_id == run_span_id(run_id)
    assert (root.attributes or {})["exosphere.run.id"] == run_id
    assert (root.attributes or {})["exosphere.graph.name"] == "conformance"
    node_ids = {s.context.span_id for s in spans if s.context is not None and s.name.startswith("node ")}
    for span in spans:
        attributes = span.attributes or {}
        assert span.context is not None and span.context.trace_id == trace_id_for_run(run_id)
        if span.name.startswith("node "):
            assert span.kind is SpanKind.INTERNAL
            assert span.context.span_id == state_span_id(str(attributes["exosphere.state.id"]))
            assert span.parent is not None and span.parent.span_id == root.context.span_id
            assert set(attributes) <= NODE_KEYS, sorted(set(attributes) - NODE_KEYS)
            assert attributes["exosphere.node.name"]
            is_root_state = span.name == "node start"
            assert len(span.links) == (0 if is_root_state else 1)
            assert all(not link.attributes for link in span.links)  # the target carries its state id
        if span.name.startswith("execute "):
            assert span.kind is SpanKind.CONSUMER
            assert span.parent is not None and span.parent.span_id in node_ids
            assert set(attributes) <= EXECUTE_KEYS, sorted(set(attributes) - EXECUTE_KEYS)
            assert float(attributes["exosphere.state.queue_wait_ms"]) >= 0  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["payload", "auto"])
async def test_one_run_is_one_trace_with_the_expected_tree(
    state_manager_with_context: EmbeddedStateManager,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    mode: str,
) -> None:
    instrumentor = ExosphereInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, placement=mode)
    try:
        run_id, spans = await run_conformance_graph(
            state_manager_with_context, span_exporter, f"tree-{uuid.uuid4()}"
        )
    finally:
        instrumentor.uninstrument()
    assert dump_tree(spans, label) == EXPECTED_RUN_TREE
    assert_complete_trace(spans, run_id)


async def test_upstream_shaped_answers_give_the_same_tree_through_the_run_apis(
    state_manager: EmbeddedStateManager,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    with instrumented(tracer_provider=tracer_provider, placement="auto"):
        run_id, spans = await run_conformance_graph(state_manager, span_exporter, f"api-{uuid.uuid4()}")
    assert dump_tree(spans, label) == EXPECTED_RUN_TREE
    assert_complete_trace(spans, run_id)
