"""A loopback HTTP proxy in front of the embedded state manager: counts calls, can break the run APIs."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Literal

import aiohttp
from aiohttp import web

RunApiMode = Literal["pass", "error", "timeout", "slow", "refuse"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RUN_API_MARKERS = ("/runs/", "/states/run/")


class CountingProxy:
    """Forwards every request to ``target``; run API requests may answer 500, never in time, slowly
    (``slow``: after ``hang_s`` seconds), or have their connection dropped with no answer (``refuse``)."""

    def __init__(self, target: str, run_api: RunApiMode = "pass", hang_s: float = 5.0) -> None:
        self.target = target.rstrip("/")
        self.run_api = run_api
        self.hang_s = hang_s
        self.calls: Counter[str] = Counter()
        self.uri = ""

    @staticmethod
    def kind(path: str) -> str:
        if path.endswith("/states/enqueue"):
            return "enqueue"
        if any(marker in path for marker in RUN_API_MARKERS):
            return "run_api"
        return "other"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        kind = self.kind(request.path)
        self.calls[kind] += 1
        if kind == "run_api":
            self.calls["run_graph" if request.path.endswith("/graph") else "runs_page"] += 1
        if kind == "run_api" and self.run_api == "refuse" and request.transport is not None:
            request.transport.abort()  # the client's call fails at once, with no answer
            raise web.HTTPServiceUnavailable()
        if kind == "run_api" and self.run_api == "error":
            return web.json_response({"detail": "broken on purpose"}, status=500)
        if kind == "run_api" and self.run_api in ("timeout", "slow"):
            await asyncio.sleep(self.hang_s)
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method, self.target + request.path_qs, data=body, headers=headers
            ) as answer,
        ):
            payload = await answer.read()
            if answer.status >= 500:
                self.calls["server_error"] += 1
            if kind == "enqueue" and b'"state_id"' in payload:
                self.calls["enqueue_with_states"] += 1
            return web.Response(body=payload, status=answer.status, content_type=answer.content_type)


@asynccontextmanager
async def serve_loopback(handler: Handler) -> AsyncIterator[str]:
    """Serve ``handler`` for every method and path on a free port of 127.0.0.1; yield the base URI."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def counting_proxy(
    target: str, run_api: RunApiMode = "pass", hang_s: float = 5.0
) -> AsyncIterator[CountingProxy]:
    proxy = CountingProxy(target, run_api, hang_s)
    async with serve_loopback(proxy.handle) as uri:
        proxy.uri = uri
        yield proxy
