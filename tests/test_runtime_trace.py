"""Every state a runtime executes lands in its run's trace: the tree, links, outcomes, run association."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from exo_otel.core.ids import run_span_id, state_span_id
from exo_otel.embedded import EmbeddedStateManager
from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from runtime_tracing import EXPECTED_RUN_TREE, label, run_conformance_graph
from span_tree import dump_tree


def assert_complete_trace(spans: list[ReadableSpan], run_id: str) -> None:
    ids = Counter(s.context.span_id for s in spans if s.context is not None)
    assert max(ids.values()) == 1, "a span id appears twice"
    present = set(ids)
    for span in spans:
        if span.parent is not None:
            assert span.parent.span_id in present, f"{span.name}: parent missing"
        for link in span.links:
            assert link.context.span_id in present, f"{span.name}: link target missing"
    [root] = [s for s in spans if s.parent is None]
    assert root.context is not None and root.context.span_id == run_span_id(run_id)
    for span in spans:
        attributes = span.attributes or {}
        assert attributes.get("exosphere.run.id") == run_id
        if span.name.startswith("node "):
            assert span.kind is SpanKind.INTERNAL
            assert span.context is not None
            assert span.context.span_id == state_span_id(str(attributes["exosphere.state.id"]))
            assert span.parent is not None and span.parent.span_id == root.context.span_id
            assert attributes["exosphere.graph.name"] == "conformance"
            is_root_state = attributes["exosphere.node.identifier"] == "start"
            assert len(span.links) == (0 if is_root_state else 1)
        if span.name.startswith("execute "):
            assert span.kind is SpanKind.CONSUMER
            assert attributes["exosphere.runtime.name"] == "test-runtime"
            assert float(attributes["exosphere.state.queue_wait_ms"]) >= 0  # type: ignore[arg-type]


@pytest.mark.parametrize("association", ["payload", "auto"])
async def test_one_run_is_one_trace_with_the_expected_tree(
    state_manager_with_context: EmbeddedStateManager,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    association: str,
) -> None:
    instrumentor = ExosphereInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, run_association=association)
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
    instrumentor = ExosphereInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, run_association="auto")
    try:
        run_id, spans = await run_conformance_graph(state_manager, span_exporter, f"api-{uuid.uuid4()}")
    finally:
        instrumentor.uninstrument()
    assert dump_tree(spans, label) == EXPECTED_RUN_TREE
    assert_complete_trace(spans, run_id)
