"""The aiohttp application: routes, API key check, error bodies, and background jobs.

Requests go through the steps in FastAPI's order, so that a request with several faults gets
upstream's answer: the body is decoded first (a JSON syntax error is a 422 even with a wrong key),
then the API key is checked (401), then the body and path parameters are validated (422).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import inspect
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web

from exo_otel_demo.embedded import bodies, listing, operations, runs, signals
from exo_otel_demo.embedded.checker import BodyUnreadable
from exo_otel_demo.embedded.documents import NotAnObjectId
from exo_otel_demo.embedded.errors import (
    INTERNAL_ERROR_BODY,
    ApiError,
    BodyInvalid,
    BodyUnparsable,
    InternalError,
    Unauthorized,
)
from exo_otel_demo.embedded.server_side import EmbeddedServerSide
from exo_otel_demo.embedded.store import Database

logger = logging.getLogger(__name__)

PREFIX = "/v0/namespace/{namespace}"
LARGE_BODY = 256 * 1024
"""Bodies above this size are decoded and checked on a worker thread, so the event loop stays free."""
MAX_BODY = 64 * 1024 * 1024
_INTEGER = re.compile(r"\s*[+-]?[0-9]+\s*")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def respond(payload: Any, status: int = 200) -> web.Response:
    """A JSON answer encoded as Starlette encodes it; upstream's 500 where that encoding fails
    (a NaN or a lone surrogate echoed from the request)."""
    try:
        text = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    except (ValueError, TypeError):
        return respond(INTERNAL_ERROR_BODY, 500)
    return web.Response(body=text, status=status, content_type="application/json")


REQUEST_ID = "x-exosphere-request-id"


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer carries ``x-exosphere-request-id``: the request's own if it is a UUID, else a new one."""
    request_id = request.headers.get(REQUEST_ID, "")
    try:
        uuid.UUID(request_id)
    except ValueError:
        request_id = str(uuid.uuid4())
    response = await handler(request)
    response.headers[REQUEST_ID] = request_id
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every failure with a JSON body, as the upstream service does."""
    try:
        return await handler(request)
    except InternalError:
        return respond(INTERNAL_ERROR_BODY, 500)
    except ApiError as exc:
        return respond({"detail": exc.detail}, exc.status)
    except BodyInvalid as exc:
        return respond({"detail": exc.errors}, 422)
    except NotAnObjectId:  # upstream's ObjectId conversion raises, and its middleware answers 500
        return respond(INTERNAL_ERROR_BODY, 500)
    except web.HTTPNotFound:
        return await _slash_redirect(request) or respond({"detail": "Not Found"}, 404)
    except web.HTTPMethodNotAllowed:
        return respond({"detail": "Method Not Allowed"}, 405)
    except web.HTTPException:
        raise
    except Exception:  # the server keeps serving whatever one request does
        logger.exception("unexpected error on %s %s", request.method, request.path)
        return respond(INTERNAL_ERROR_BODY, 500)


async def _slash_redirect(request: web.Request) -> web.StreamResponse | None:
    """FastAPI's answer to a path that matches a route once its trailing slash is added or removed:
    307 to that path (whatever the method matches)."""
    path = request.path
    if path == "/":
        return None
    other = path[:-1] if path.endswith("/") else path + "/"
    match = await request.app.router.resolve(request.clone(rel_url=request.rel_url.with_path(other)))
    if match.http_exception is not None and not isinstance(match.http_exception, web.HTTPMethodNotAllowed):
        return None
    location = request.url.with_path(other)
    return web.Response(status=307, headers={"location": str(location)})


async def health(request: web.Request) -> web.Response:
    """``GET /health``: upstream's liveness answer (no key needed)."""
    return respond({"message": "OK"})


def _path_ints(request: web.Request, *names: str) -> list[int]:
    values: list[int] = []
    errors: list[dict[str, Any]] = []
    for name in names:
        raw = request.match_info[name]
        if _INTEGER.fullmatch(raw):
            values.append(int(raw))
        else:
            msg = "Input should be a valid integer, unable to parse string as an integer"
            errors.append({"type": "int_parsing", "loc": ["path", name], "msg": msg, "input": raw})
    if errors:
        raise BodyInvalid(errors)
    return values


class Api:
    """Route handlers over one database."""

    def __init__(self, db: Database, api_key: str, expose_run_context: bool) -> None:
        if not api_key:
            raise ValueError("the API key must not be empty")
        self.db = db
        self.api_key = api_key
        self.expose_run_context = expose_run_context
        self.jobs: set[asyncio.Task[None]] = set()
        self.side: EmbeddedServerSide | None = None  # exo_otel's state manager side, when asked for

    def _authorize(self, request: web.Request) -> str:
        given = request.headers.get("x-api-key")
        if given is None or not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise Unauthorized()
        return request.match_info.get("namespace", "")

    async def _body(self, request: web.Request, parse: Callable[[Any], Any]) -> tuple[str, Any]:
        """Decode the body, check the key, then check the body with ``parse``: FastAPI's order."""
        raw = await request.read()
        content_type = request.headers.get("content-type")

        def decode() -> Any:
            try:
                return bodies.decode_json(raw, content_type)
            except BodyUnreadable:
                raise BodyUnparsable() from None

        document = await asyncio.to_thread(decode) if len(raw) > LARGE_BODY else decode()
        namespace = self._authorize(request)
        if len(raw) > LARGE_BODY:
            return namespace, await asyncio.to_thread(parse, document)
        return namespace, parse(document)

    def _background(self, job: operations.Job, large: bool = False) -> None:
        """Run ``job`` after this handler returns, like a FastAPI background task; a ``large`` one (the
        next states of thousands of fan-out copies) on a worker thread, so the event loop stays free."""

        async def run() -> None:
            await asyncio.sleep(0)
            try:
                if large:  # on a worker thread (never one of the state manager side's: those are async)
                    await asyncio.to_thread(job)
                else:
                    done = cast(Callable[[], object], job)()  # the state manager side's jobs are async
                    if inspect.isawaitable(done):
                        await done
            except Exception:
                logger.exception("background job failed")

        task = asyncio.get_running_loop().create_task(run())
        self.jobs.add(task)
        task.add_done_callback(self.jobs.discard)

    async def drain(self) -> None:
        """Wait for the background jobs still pending."""
        while self.jobs:
            await asyncio.gather(*list(self.jobs), return_exceptions=True)

    async def register_nodes(self, request: web.Request) -> web.Response:
        namespace, body = await self._body(request, bodies.parse_register_nodes)
        return respond(operations.register_nodes(self.db, namespace, body))

    async def upsert_graph(self, request: web.Request) -> web.Response:
        namespace, body = await self._body(request, bodies.parse_upsert_graph)
        answer, job = operations.upsert_graph(self.db, namespace, request.match_info["graph"], body)
        self._background(job)
        return respond(answer, 201)

    async def get_graph(self, request: web.Request) -> web.Response:
        namespace = self._authorize(request)
        return respond(operations.get_graph(self.db, namespace, request.match_info["graph"]))

    async def trigger(self, request: web.Request) -> web.Response:
        namespace, body = await self._body(request, bodies.parse_trigger)
        start_ns = time.time_ns()
        graph = request.match_info["graph"]
        answer = operations.trigger(self.db, namespace, graph, body)
        if self.side is not None:
            answer = await self.side.triggered(answer, namespace, graph, start_ns, request.headers)
        return respond(answer)

    async def enqueue(self, request: web.Request) -> web.Response:
        parse = bodies.fields_parser({"nodes": "str[]", "batch_size": "int"})
        namespace, body = await self._body(request, parse)
        expose = self.expose_run_context
        answer = operations.enqueue(self.db, namespace, body["nodes"], body["batch_size"], expose)
        if self.side is not None:
            answer = await self.side.enqueued(answer, namespace)
        return respond(answer)

    async def executed(self, request: web.Request) -> web.Response:
        _, body = await self._body(request, bodies.fields_parser({"outputs": "dict[]"}))
        state_id = request.match_info["state_id"]
        # The state manager side needs the copies this call makes: those run inline (no await in
        # between), so the states added after ``known`` are exactly them.
        large = len(body["outputs"]) > operations.COPIES_PER_STEP and self.side is None
        known = len(self.db.states)
        if large:
            answer, job = await asyncio.to_thread(operations.executed, self.db, state_id, body["outputs"])
        else:
            answer, job = operations.executed(self.db, state_id, body["outputs"])
        if self.side is not None:
            await self.side.reported(state_id, request.headers)
            copies = list(self.db.states)[known:]
            job = self.side.next_states_job([state_id, *copies], job)
        self._background(job, large)
        return respond(answer)

    async def errored(self, request: web.Request) -> web.Response:
        _, body = await self._body(request, bodies.fields_parser({"error": "str"}))
        answer = signals.errored(self.db, request.match_info["state_id"], body["error"])
        if self.side is not None:
            await self.side.reported(request.match_info["state_id"], request.headers)
            await self.side.settled(request.match_info["state_id"])
        return respond(answer)

    async def prune(self, request: web.Request) -> web.Response:
        _, body = await self._body(request, bodies.fields_parser({"data": "dict"}))
        answer = signals.prune(self.db, request.match_info["state_id"], body["data"])
        if self.side is not None:
            await self.side.reported(request.match_info["state_id"], request.headers)
            await self.side.settled(request.match_info["state_id"])
        return respond(answer)

    async def re_enqueue_after(self, request: web.Request) -> web.Response:
        _, body = await self._body(request, bodies.fields_parser({"enqueue_after": "int>0"}))
        state_id = request.match_info["state_id"]
        answer = signals.re_enqueue_after(self.db, state_id, body["enqueue_after"])
        if self.side is not None:
            await self.side.reported(state_id, request.headers)
            await self.side.requeued(state_id, body["enqueue_after"], time.time_ns())
        return respond(answer)

    async def manual_retry(self, request: web.Request) -> web.Response:
        namespace, body = await self._body(request, bodies.fields_parser({"fanout_id": "str"}))
        state_id = request.match_info["state_id"]
        answer = signals.manual_retry(self.db, namespace, state_id, body["fanout_id"])
        if self.side is not None:
            await self.side.retried(answer, state_id)
        return respond(answer)

    async def secrets(self, request: web.Request) -> web.Response:
        namespace = self._authorize(request)
        return respond(signals.get_secrets(self.db, namespace, request.match_info["state_id"]))

    async def list_nodes(self, request: web.Request) -> web.Response:
        return respond(listing.list_nodes(self.db, self._authorize(request)))

    async def list_graphs(self, request: web.Request) -> web.Response:
        return respond(listing.list_graphs(self.db, self._authorize(request)))

    async def list_namespaces(self, request: web.Request) -> web.Response:
        self._authorize(request)
        return respond(listing.list_namespaces(self.db))

    async def list_runs(self, request: web.Request) -> web.Response:
        namespace = self._authorize(request)
        page, size = _path_ints(request, "page", "size")
        return respond(runs.list_runs(self.db, namespace, page, size))

    async def graph_structure(self, request: web.Request) -> web.Response:
        namespace = self._authorize(request)
        return respond(runs.graph_structure(self.db, namespace, request.match_info["run_id"]))

    async def node_details(self, request: web.Request) -> web.Response:
        namespace = self._authorize(request)
        info = request.match_info
        return respond(runs.node_details(self.db, namespace, info["graph"], info["run_id"], info["state_id"]))


def build_app(api: Api) -> web.Application:
    """The aiohttp application serving ``api``."""
    app = web.Application(middlewares=[request_id_middleware, error_middleware], client_max_size=MAX_BODY)
    state = f"{PREFIX}/state/{{state_id}}"
    get = functools.partial(web.get, allow_head=False)  # FastAPI answers HEAD with 405
    app.router.add_routes([
        get("/health", health),
        web.put(f"{PREFIX}/nodes/", api.register_nodes),
        get(f"{PREFIX}/nodes/", api.list_nodes),
        get(f"{PREFIX}/graphs/", api.list_graphs),
        get("/v0/namespaces", api.list_namespaces),
        web.put(f"{PREFIX}/graph/{{graph}}", api.upsert_graph),
        get(f"{PREFIX}/graph/{{graph}}", api.get_graph),
        web.post(f"{PREFIX}/graph/{{graph}}/trigger", api.trigger),
        web.post(f"{PREFIX}/states/enqueue", api.enqueue),
        web.post(f"{state}/executed", api.executed),
        web.post(f"{state}/errored", api.errored),
        web.post(f"{state}/prune", api.prune),
        web.post(f"{state}/re-enqueue-after", api.re_enqueue_after),
        web.post(f"{state}/manual-retry", api.manual_retry),
        get(f"{state}/secrets", api.secrets),
        get(f"{PREFIX}/runs/{{page}}/{{size}}", api.list_runs),
        get(f"{PREFIX}/states/run/{{run_id}}/graph", api.graph_structure),
        get(f"{PREFIX}/graph/{{graph}}/run/{{run_id}}/node/{{state_id}}", api.node_details),
    ])
    return app
