"""A loopback proxy in front of a state manager that rewrites the states of enqueue answers.

The adversarial tests use it to hand the real SDK hostile payloads: ``mutate(state)`` may change
any field of each enqueued state in place (the SDK itself reads only ``state_id``, ``node_name``
and ``inputs``, which the tests leave alone, so state histories must not change).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import web

from helpers.http_proxy import serve_loopback

Mutation = Callable[[dict[str, Any]], None]


class MutatingProxy:
    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.mutate: Mutation = lambda state: None
        self.uri = ""
        self.session: aiohttp.ClientSession | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        if self.session is None:
            self.session = aiohttp.ClientSession()
        async with self.session.request(
            request.method, self.target + request.path_qs, data=body, headers=headers
        ) as answer:
            payload = await answer.read()
            if request.path.endswith("/states/enqueue") and answer.status == 200:
                document = json.loads(payload)
                for state in document.get("states", []):
                    self.mutate(state)
                # ensure_ascii: lone surrogates travel as \\udXXX escapes, as a hostile server could send.
                payload = json.dumps(document).encode()
            return web.Response(body=payload, status=answer.status, content_type=answer.content_type)


@asynccontextmanager
async def mutating_proxy(target: str) -> AsyncIterator[MutatingProxy]:
    proxy = MutatingProxy(target)
    async with serve_loopback(proxy.handle) as uri:
        proxy.uri = uri
        try:
            yield proxy
        finally:
            if proxy.session is not None:
                await proxy.session.close()
