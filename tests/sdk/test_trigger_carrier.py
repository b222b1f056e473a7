"""The instrumented trigger sends the caller's W3C context on its request, once, via the propagators."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from exospherehost import StateManager
from opentelemetry import baggage, context
from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exo_otel.sdk.instrumentor import ExosphereInstrumentor

Seen = list[tuple[list[str], list[str]]]


@pytest.fixture
async def trigger_endpoint() -> AsyncIterator[tuple[str, Seen]]:
    """A trigger route that records the traceparent and baggage headers it gets (answers as upstream)."""
    seen: Seen = []

    async def trigger(request: web.Request) -> web.Response:
        seen.append((request.headers.getall("traceparent", []), request.headers.getall("baggage", [])))
        return web.json_response({"status": "CREATED", "run_id": str(uuid.uuid4())})

    app = web.Application()
    app.router.add_post("/v0/namespace/{namespace}/graph/{graph}/trigger", trigger)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("aiohttp_instrumented", [False, True], ids=["alone", "with-aiohttp-instrumentation"])
async def test_caller_context_goes_once_on_the_trigger_request(
    trigger_endpoint: tuple[str, Seen],
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    instrumentor: ExosphereInstrumentor,
    aiohttp_instrumented: bool,
) -> None:
    uri, seen = trigger_endpoint
    if aiohttp_instrumented:
        AioHttpClientInstrumentor().instrument(tracer_provider=tracer_provider)
    try:
        client = StateManager(namespace="ns", state_manager_uri=uri, key="k")
        tracer = tracer_provider.get_tracer("caller")
        token = context.attach(baggage.set_baggage("tenant", "acme"))
        try:
            with tracer.start_as_current_span("handler") as handler:
                await client.trigger("g")
            await client.trigger("g")  # same baggage, no span: baggage only
        finally:
            context.detach(token)
        await client.trigger("g")  # nothing current: nothing sent (or only the aiohttp client span)
    finally:
        if aiohttp_instrumented:
            AioHttpClientInstrumentor().uninstrument()
    caller_trace = f"{handler.get_span_context().trace_id:032x}"
    (first_parent, first_baggage), (second_parent, second_baggage), (third_parent, third_baggage) = seen
    assert len(first_parent) == 1 and first_parent[0].split("-")[1] == caller_trace
    assert first_baggage == ["tenant=acme"] and second_baggage == ["tenant=acme"]
    assert third_baggage == []
    if aiohttp_instrumented:
        # The HTTP client span is the parent the server sees; still one header of each.
        assert len(second_parent) == 1 and len(third_parent) == 1
    else:
        assert second_parent == [] and third_parent == []
