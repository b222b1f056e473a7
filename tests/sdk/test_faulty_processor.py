"""A span processor that raises in on_start or on_end never reaches user code through exo_otel."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exo_otel_demo.embedded import EmbeddedStateManager
from helpers.hostile_nodes import NAMESPACE, RaiseNode, upsert_one_node_graph
from helpers.otel_fixtures import instrumented
from helpers.sm_fixtures import running_runtime, sdk_state_manager, wait_for_run, wait_until


class FaultyProcessor(SpanProcessor):
    """Raises in whichever of on_start and on_end it is told to."""

    def __init__(self, on_start: bool, on_end: bool) -> None:
        self.raise_on_start = on_start
        self.raise_on_end = on_end

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if self.raise_on_start:
            raise RuntimeError("faulty on_start")

    def on_end(self, span: ReadableSpan) -> None:
        if self.raise_on_end:
            raise RuntimeError("faulty on_end")


@pytest.fixture
def exporter_then_faulty(request: pytest.FixtureRequest) -> Iterator[InMemorySpanExporter]:
    """The exporter's processor first, then a faulty one raising where ``request.param`` says."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.add_span_processor(FaultyProcessor(*request.param))
    meter_provider = MeterProvider()
    with instrumented(tracer_provider=provider, meter_provider=meter_provider):
        yield exporter
    provider.shutdown()
    meter_provider.shutdown()


def _state_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith(("node ", "execute "))]


@pytest.mark.parametrize(
    "exporter_then_faulty", [(False, True), (True, False), (True, True)], indirect=True,
    ids=["on_end", "on_start", "both"],
)
async def test_graph_calls_and_runtimes_go_on_and_node_spans_are_kept(
    exporter_then_faulty: InMemorySpanExporter, state_manager: EmbeddedStateManager,
    request: pytest.FixtureRequest,
) -> None:
    raises_on_start = request.node.callspec.id != "on_end"
    client = sdk_state_manager(state_manager, NAMESPACE)
    async with running_runtime(state_manager, NAMESPACE, [RaiseNode]):
        # upsert_graph, then get_graph until valid: neither may raise into this code.
        await upsert_one_node_graph(client, "faulty", RaiseNode)
        graph = await client.get_graph("faulty")
        assert graph["validation_status"] == "VALID"
        run_ids = [(await client.trigger("faulty", store={"text": str(i)}))["run_id"] for i in range(3)]
        for run_id in run_ids:
            assert await wait_for_run(state_manager, run_id) == "SUCCESS"
        if not raises_on_start:
            # The exporter's processor comes first: every span exo_otel ends reaches it.
            await wait_until(lambda: len(_state_spans(exporter_then_faulty)) == 6)
    for run_id in run_ids:
        assert [s.status for s in state_manager.states(run_id)] == ["SUCCESS"]
    names = [s.name for s in exporter_then_faulty.get_finished_spans()]
    if raises_on_start:
        # The SDK gives no span back when on_start raises: there is nothing exo_otel could end.
        assert _state_spans(exporter_then_faulty) == []
    else:
        assert "upsert_graph faulty" in names and "get_graph faulty" in names
        assert len(_state_spans(exporter_then_faulty)) == 6
