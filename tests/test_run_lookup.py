"""RunLookup over real HTTP: right runs and parents, bounded calls and caches, quiet failures."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exo_otel._run_lookup import RunInfo, RunLookup

NAMESPACE = "lookup-ns"
API_KEY = "lookup-key"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- a stand-in server for the failure modes the embedded state manager cannot produce ---


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """Serve one handler for every path on 127.0.0.1; gives the base uri."""
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_unreachable_port_gives_nothing_quickly() -> None:
    lookup = RunLookup(f"http://127.0.0.1:{free_port()}", NAMESPACE, API_KEY, timeout_s=1.0)
    started = time.monotonic()
    assert await lookup.resolve(["a" * 24, "b" * 24]) == {}
    assert time.monotonic() - started < 1.5
    # A transport failure ends the resolve: no further calls are spent on a dead server.
    assert lookup.calls == 1


async def test_server_that_never_answers_times_out(serve: Callable[[Handler], Awaitable[str]]) -> None:
    async def sleepy(request: web.Request) -> web.Response:
        await asyncio.sleep(10)
        return web.json_response({})

    lookup = RunLookup(await serve(sleepy), NAMESPACE, API_KEY, timeout_s=0.3)
    started = time.monotonic()
    assert await lookup.resolve(["a" * 24]) == {}
    assert time.monotonic() - started < 1.0
    assert lookup.calls == 1


@pytest.mark.parametrize(
    ("runs_body", "graph_body"),
    [
        ("not json", "not json"),
        ([], []),
        ({"runs": "nope"}, {}),
        (
            {"runs": [None, 3, {"run_id": 5}, {"run_id": "r1", "status": "PENDING"}]},
            {"nodes": 3, "edges": []},
        ),
        (
            {"runs": [{"run_id": "r1", "status": "PENDING"}]},
            {"nodes": [None, {"id": 7}, {"id": "s-other"}], "edges": [None, {"source": 1}], "graph_name": 9},
        ),
    ],
)
async def test_malformed_answers_give_nothing(
    serve: Callable[[Handler], Awaitable[str]], runs_body: object, graph_body: object
) -> None:
    async def handler(request: web.Request) -> web.Response:
        body = graph_body if request.path.endswith("/graph") else runs_body
        if isinstance(body, str):
            return web.Response(text=body, content_type="application/json")
        return web.json_response(body)

    lookup = RunLookup(await serve(handler), NAMESPACE, API_KEY, max_calls_per_poll=3)
    assert await lookup.resolve(["s-wanted"]) == {}
    assert lookup.calls <= 3


async def test_error_status_gives_nothing(serve: Callable[[Handler], Awaitable[str]]) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"detail": "boom"}, status=500)

    lookup = RunLookup(await serve(handler), NAMESPACE, API_KEY)
    assert await lookup.resolve(["s-wanted"]) == {}
    assert lookup.calls == 1


async def test_own_calls_make_no_client_spans(serve: Callable[[Handler], Awaitable[str]]) -> None:
    async def handler(request: web.Request) -> web.Response:
        if request.path.endswith("/graph"):
            nodes = [{"id": "s-root"}, {"id": "s-child"}]
            return web.json_response(
                {"graph_name": "g", "nodes": nodes, "edges": [{"source": "s-root", "target": "s-child"}]}
            )
        return web.json_response({"runs": [{"run_id": "r1", "graph_name": "g", "status": "PENDING"}]})

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = AioHttpClientInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        base_uri = await serve(handler)
        async with aiohttp.ClientSession() as session, session.get(f"{base_uri}/probe"):
            pass
        assert len(exporter.get_finished_spans()) == 1  # the instrumentation is live
        exporter.clear()
        lookup = RunLookup(base_uri, NAMESPACE, API_KEY)
        assert await lookup.resolve(["s-child"]) == {"s-child": RunInfo("r1", "g", "s-root")}
        assert lookup.calls == 2
        assert exporter.get_finished_spans() == ()
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
