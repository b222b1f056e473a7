"""The trigger as the run's root span, with the real SDK over HTTP against the embedded state manager."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from exospherehost import StateManager
from opentelemetry import trace
from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from exo_otel import run_id_for_trace, run_span_id, trace_id_for_run
from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from exo_otel_demo.embedded import EmbeddedStateManager
from helpers import conformance_graph as cg
from helpers.otel_fixtures import instrumented
from helpers.sm_fixtures import running_runtime, sdk_state_manager


@pytest.fixture
async def graph_ready(state_manager: EmbeddedStateManager) -> AsyncIterator[StateManager]:
    """The conformance graph registered and valid; no runtime left polling (runs stay queued)."""
    async with running_runtime(state_manager, cg.NAMESPACE, cg.NODES):
        pass
    client = sdk_state_manager(state_manager, cg.NAMESPACE)
    await cg.upsert(client)
    yield client


def _trigger_spans(exporter: InMemorySpanExporter) -> list[trace.Span]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith("trigger ")]  # type: ignore[misc]


async def test_one_trigger_is_one_root_span_of_the_run_trace(
    graph_ready: StateManager,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    instrumentor: ExosphereInstrumentor,
) -> None:
    http = AioHttpClientInstrumentor()
    http.instrument(tracer_provider=tracer_provider)
    try:
        answer = await graph_ready.trigger(cg.GRAPH, store={"topic": "root"}, start_delay=5)
    finally:
        http.uninstrument()
    run_id = answer["run_id"]
    [span] = _trigger_spans(span_exporter)
    assert span.name == f"trigger {cg.GRAPH}"
    assert span.context.trace_id == trace_id_for_run(run_id)
    assert run_id_for_trace(span.context.trace_id) == run_id
    assert span.context.span_id == run_span_id(run_id)
    assert span.parent is None
    assert span.kind is SpanKind.PRODUCER
    assert span.status.status_code is StatusCode.UNSET
    assert dict(span.attributes or {}) == {
        "exosphere.namespace": cg.NAMESPACE,
        "exosphere.graph.name": cg.GRAPH,
        "exosphere.run.id": run_id,
        "exosphere.trigger.start_delay_ms": 5,
        "messaging.system": "exosphere",
        "messaging.operation.type": "send",
        "messaging.operation.name": "trigger",
        "messaging.destination.name": cg.GRAPH,
    }
    # The aiohttp instrumentation's own span of the request (old or stable semconv URL key).
    [request] = [
        s
        for s in span_exporter.get_finished_spans()
        if s.kind is SpanKind.CLIENT
        and str({**(s.attributes or {})}.get("url.full", (s.attributes or {}).get("http.url"))).endswith(
            "/trigger"
        )
    ]
    # Backdated: the span covers the whole HTTP request, though it was created after the answer.
    assert span.start_time is not None and request.start_time is not None
    assert span.end_time is not None and request.end_time is not None
    assert span.start_time <= request.start_time
    assert span.end_time >= request.end_time
    # The HTTP client span lives in the caller's context, not in the run's trace.
    assert request.context.trace_id != span.context.trace_id


async def test_inside_a_caller_span_it_links_both_ways_and_stays_a_root(
    graph_ready: StateManager,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    instrumentor: ExosphereInstrumentor,
) -> None:
    tracer = tracer_provider.get_tracer("caller")
    with tracer.start_as_current_span("handle request") as caller:
        answer = await graph_ready.trigger(cg.GRAPH, store={"topic": "caller"})
        assert trace.get_current_span() is caller
    run_id = answer["run_id"]
    [span] = _trigger_spans(span_exporter)
    [caller_done] = [s for s in span_exporter.get_finished_spans() if s.name == "handle request"]
    assert span.parent is None
    assert span.context.trace_id == trace_id_for_run(run_id) != caller_done.context.trace_id
    assert [link.context for link in span.links] == [caller_done.context]
    assert [link.context for link in caller_done.links] == [span.context]
    assert caller_done.parent is None and caller_done.status.status_code is StatusCode.UNSET


async def test_a_failed_trigger_raises_as_before_and_leaves_an_error_span_in_the_caller_trace(
    graph_ready: StateManager,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    with pytest.raises(Exception) as plain:
        await graph_ready.trigger("no-such-graph")
    instrumentor = ExosphereInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider)
    try:
        tracer = tracer_provider.get_tracer("caller")
        with tracer.start_as_current_span("caller") as caller, pytest.raises(Exception) as traced:
            await graph_ready.trigger("no-such-graph")
    finally:
        instrumentor.uninstrument()
    assert type(traced.value) is type(plain.value)
    assert str(traced.value) == str(plain.value)
    [span] = _trigger_spans(span_exporter)
    assert span.name == "trigger no-such-graph"
    assert span.status.status_code is StatusCode.ERROR
    assert span.context.trace_id == caller.get_span_context().trace_id
    assert span.parent is not None and span.parent.span_id == caller.get_span_context().span_id
    assert (span.attributes or {})["error.type"] == "Exception"
    assert [event.name for event in span.events] == ["exception"]


async def test_fifty_concurrent_triggers_give_fifty_traces(
    graph_ready: StateManager,
    span_exporter: InMemorySpanExporter,
    instrumentor: ExosphereInstrumentor,
) -> None:
    answers = await asyncio.gather(
        *(graph_ready.trigger(cg.GRAPH, store={"topic": f"c{i}"}) for i in range(50))
    )
    spans = _trigger_spans(span_exporter)
    assert len(spans) == 50
    by_run = {(s.attributes or {})["exosphere.run.id"]: s for s in spans}
    assert set(by_run) == {a["run_id"] for a in answers}
    for run_id, span in by_run.items():
        assert span.context.trace_id == trace_id_for_run(str(run_id))
        assert span.context.span_id == run_span_id(str(run_id))
    assert len({s.context.trace_id for s in spans}) == 50


async def test_graph_calls_are_client_spans_in_the_caller_trace(
    state_manager: EmbeddedStateManager,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    instrumentor: ExosphereInstrumentor,
) -> None:
    async with running_runtime(state_manager, cg.NAMESPACE, cg.NODES):
        pass
    client = sdk_state_manager(state_manager, cg.NAMESPACE)
    with tracer_provider.get_tracer("caller").start_as_current_span("deploy") as caller:
        await cg.upsert(client)
        with pytest.raises(Exception, match="404"):
            await client.get_graph("absent")
    spans = {s.name: s for s in span_exporter.get_finished_spans()}
    upsert, missing = spans[f"upsert_graph {cg.GRAPH}"], spans["get_graph absent"]
    for span in (upsert, missing):
        assert span.kind is SpanKind.CLIENT
        assert span.context.trace_id == caller.get_span_context().trace_id
    assert missing.status.status_code is StatusCode.ERROR
    assert upsert.status.status_code is StatusCode.UNSET


async def test_suppressed_instrumentation_makes_no_span(
    graph_ready: StateManager,
    span_exporter: InMemorySpanExporter,
    instrumentor: ExosphereInstrumentor,
) -> None:
    with suppress_instrumentation():
        answer = await graph_ready.trigger(cg.GRAPH, store={"topic": "quiet"})
    assert answer["status"] == "CREATED"
    assert span_exporter.get_finished_spans() == ()


class ForeignTracerProvider(trace.TracerProvider):
    """A provider that is not the SDK's: ids cannot be pinned there."""

    def __init__(self, inner: TracerProvider) -> None:
        self.inner = inner

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return self.inner.get_tracer(*args, **kwargs)


@pytest.mark.parametrize("kind", ["no-op", "foreign"])
async def test_other_tracer_providers_break_nothing(
    graph_ready: StateManager, tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter, kind: str
) -> None:
    provider = trace.NoOpTracerProvider() if kind == "no-op" else ForeignTracerProvider(tracer_provider)
    with instrumented(tracer_provider=provider):
        answer = await graph_ready.trigger(cg.GRAPH, store={"topic": kind})
    assert answer["status"] == "CREATED"
    spans = _trigger_spans(span_exporter)
    if kind == "no-op":
        assert spans == []
    else:
        # Degraded: an ordinary root span that still names the run.
        [span] = spans
        assert (span.attributes or {})["exosphere.run.id"] == answer["run_id"]
        assert span.parent is None
        assert span.context.trace_id != trace_id_for_run(answer["run_id"])
