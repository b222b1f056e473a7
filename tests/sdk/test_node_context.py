"""Inside a node: baggage, outgoing HTTP context, log correlation; and behaviour unchanged by tracing."""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import aiohttp
import pytest
from aiohttp import web
from exospherehost import BaseNode, GraphNodeModel
from opentelemetry import baggage
from opentelemetry.context import Context
from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from pydantic import BaseModel

from exo_otel import format_trace_id
from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from exo_otel_demo.embedded import EmbeddedStateManager
from helpers import conformance_graph as cg
from helpers.runtime_tracing import run_spans
from helpers.sm_fixtures import running_runtime, sdk_state_manager, wait_for_run, wait_until

NAMESPACE = "node-context"
node_log = logging.getLogger("exo_otel.tests.node_code")


class CallerNode(BaseNode):
    seen_baggage: ClassVar[dict[str, object]] = {}

    class Inputs(BaseModel):
        url: str

    class Outputs(BaseModel):
        status: str

    async def execute(self) -> BaseNode.Outputs:
        CallerNode.seen_baggage.update(baggage.get_all())
        node_log.warning("calling downstream")
        async with aiohttp.ClientSession() as session, session.get(self.inputs.url) as response:
            return self.Outputs(status=str(response.status))


@pytest.fixture
async def downstream() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """A local HTTP server that records the headers it is sent."""
    received: list[dict[str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        received.append(dict(request.headers))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/downstream", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/downstream", received
    await runner.cleanup()


async def test_node_code_sees_the_run_in_baggage_headers_and_logs(
    state_manager_with_context: EmbeddedStateManager,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    instrumentor: ExosphereInstrumentor,
    downstream: tuple[str, list[dict[str, str]]],
) -> None:
    url, received = downstream
    http = AioHttpClientInstrumentor()
    http.instrument(tracer_provider=tracer_provider)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("trace=%(otelTraceID)s run=%(exosphere_run_id)s %(message)s"))
    node_log.addHandler(handler)
    sm = state_manager_with_context
    try:
        async with running_runtime(sm, NAMESPACE, [CallerNode]):
            client = sdk_state_manager(sm, NAMESPACE)
            node = GraphNodeModel(
                node_name="CallerNode", namespace=NAMESPACE, identifier="call", inputs={"url": url}
            )
            await client.upsert_graph("calls", [node], {}, polling_interval=0.05)  # type: ignore[arg-type]
            run_id = (await client.trigger("calls"))["run_id"]
            assert await wait_for_run(sm, run_id) == "SUCCESS"
            await wait_until(
                lambda: any(s.name == "execute CallerNode" for s in span_exporter.get_finished_spans())
            )
    finally:
        http.uninstrument()
        node_log.removeHandler(handler)
    trace_hex = format_trace_id(run_id)
    assert CallerNode.seen_baggage["exosphere.run.id"] == run_id
    assert CallerNode.seen_baggage["exosphere.node.identifier"] == "call"
    assert CallerNode.seen_baggage["exosphere.graph.name"] == "calls"
    [headers] = received
    spans = run_spans(span_exporter.get_finished_spans(), run_id)
    [execute] = [s for s in spans if s.name == "execute CallerNode"]
    # The execute span also holds the runtime's own report call; pick the node's downstream call.
    [request] = [s for s in spans if s.kind is SpanKind.CLIENT and s.name == "GET"]
    assert request.parent is not None and execute.context is not None
    assert request.parent.span_id == execute.context.span_id
    assert request.context is not None
    assert headers["traceparent"] == f"00-{trace_hex}-{request.context.span_id:016x}-01"
    assert f"exosphere.run.id={run_id}" in headers["baggage"]
    assert f"trace={trace_hex} run={run_id} calling downstream" in stream.getvalue()
    # Polling makes no spans, not even the aiohttp instrumentation's (it polled many times meanwhile).
    urls = [str({**(s.attributes or {})}.get("http.url", "")) for s in span_exporter.get_finished_spans()]
    assert not [url for url in urls if url.endswith("/states/enqueue")]


def _normalized_history(sm: EmbeddedStateManager, run_id: str, topic: str) -> list[tuple[Any, ...]]:
    ids = {s.id: s.identifier for s in sm.states(run_id)}

    def clean(value: object) -> str:
        return str(value).replace(topic, "<topic>")

    return sorted(
        (
            s.identifier,
            tuple(str(x) for x in s.statuses),
            s.retry_count,
            clean(s.inputs),
            clean(s.outputs),
            clean(s.error),
            clean(s.data),
            tuple(ids.get(p, "?") for p in s.parents.values()),
        )
        for s in sm.states(run_id)
    )


async def _conformance_run(sm: EmbeddedStateManager) -> list[tuple[Any, ...]]:
    topic = f"same-{uuid.uuid4()}"
    async with running_runtime(sm, cg.NAMESPACE, cg.NODES):
        client = sdk_state_manager(sm, cg.NAMESPACE)
        await cg.upsert(client)
        run_id = (await client.trigger(cg.GRAPH, store={"topic": topic}))["run_id"]
        assert await wait_for_run(sm, run_id) == "SUCCESS"
    return _normalized_history(sm, run_id, topic)


class FailingProcessor(SpanProcessor):
    """A span processor that raises on every span start: a fault inside the tracing path."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        raise RuntimeError("span processor bug")

    def on_end(self, span: ReadableSpan) -> None:
        pass


async def test_state_histories_are_the_same_with_and_without_tracing(
    state_manager: EmbeddedStateManager, tracer_provider: TracerProvider
) -> None:
    plain = await _conformance_run(state_manager)
    instrumentor = ExosphereInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider)
    try:
        traced = await _conformance_run(state_manager)
    finally:
        instrumentor.uninstrument()
    broken_provider = TracerProvider()
    broken_provider.add_span_processor(FailingProcessor())
    instrumentor.instrument(tracer_provider=broken_provider)
    try:
        broken = await _conformance_run(state_manager)
    finally:
        instrumentor.uninstrument()
    assert len(plain) == 14
    assert traced == plain
    assert broken == plain
