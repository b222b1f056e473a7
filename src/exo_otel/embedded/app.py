"""The aiohttp application: routes, API key check, error bodies, and background jobs."""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web

from exo_otel.embedded import bodies, operations, runs
from exo_otel.embedded.errors import ApiError, BodyInvalid, Unauthorized
from exo_otel.embedded.server_side import EmbeddedServerSide
from exo_otel.embedded.store import Database

logger = logging.getLogger(__name__)

PREFIX = "/v0/namespace/{namespace}"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.json_response(payload, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every failure with a JSON ``detail`` body, as the upstream service does."""
    try:
        return await handler(request)
    except ApiError as exc:
        return _json({"detail": exc.detail}, exc.status)
    except BodyInvalid as exc:
        return _json({"detail": exc.errors}, 422)
    except web.HTTPNotFound:
        return _json({"detail": "Not Found"}, 404)
    except web.HTTPMethodNotAllowed:
        return _json({"detail": "Method Not Allowed"}, 405)
    except web.HTTPException:
        raise
    except Exception:  # the server keeps serving whatever one request does
        logger.exception("unexpected error on %s %s", request.method, request.path)
        return _json({"detail": "Internal server error"}, 500)


def _path_int(request: web.Request, name: str) -> int:
    raw = request.match_info[name]
    try:
        return int(raw)
    except ValueError:
        msg = "Input should be a valid integer, unable to parse string as an integer"
        error = {"type": "int_parsing", "loc": ["path", name], "msg": msg, "input": raw}
        raise BodyInvalid([error]) from None


class Api:
    """Route handlers over one database."""

    def __init__(self, db: Database, api_key: str, expose_run_context: bool) -> None:
        self.db = db
        self.api_key = api_key
        self.expose_run_context = expose_run_context
        self.jobs: set[asyncio.Task[None]] = set()
        self.side: EmbeddedServerSide | None = None  # exo_otel's state manager side, when asked for

    def _authorize(self, request: web.Request) -> str:
        given = request.headers.get("x-api-key", "")
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            raise Unauthorized()
        return request.match_info["namespace"]

    async def _document(self, request: web.Request) -> Any:
        return bodies.decode_json(await request.read())

    def _background(self, job: operations.Job) -> None:
        """Run ``job`` on the loop after this handler returns, like a FastAPI background task."""

        async def run() -> None:
            await asyncio.sleep(0)
            try:
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
        namespace = self._authorize(request)
        body = bodies.parse_register_nodes(await self._document(request))
        return _json(operations.register_nodes(self.db, namespace, body))

    async def upsert_graph(self, request: web.Request) -> web.Response:
        namespace = self._authorize(request)
        body = bodies.parse_upsert_graph(await self._document(request))
        answer, job = operations.upsert_graph(self.db, namespace, request.match_info["graph"], body)
        self._background(job)
        return _json(answer, 201)

    async def get_graph(self, request: web.Request) -> web.Response:
        namespace = self._authorize(request)
        return _json(operations.get_graph(self.db, namespace, request.match_info["graph"]))

    async def trigger(self, request: web.Request) -> web.Response:
        namespace = self._authorize(request)
        body = bodies.parse_trigger(await self._document(request))
        start_ns = time.time_ns()
        answer = operations.trigger(self.db, namespace, request.match_info["graph"], body)
        if self.side is not None:
            graph = request.match_info["graph"]
            answer = await self.side.triggered(answer, namespace, graph, start_ns, request.headers)
        return _json(answer)

    async def enqueue(self, request: web.Request) -> web.Response:
        namespace = self._authorize(request)
        body = bodies.parse_fields(await self._document(request), {"nodes": "str[]", "batch_size": "int"})
        expose = self.expose_run_context
        answer = operations.enqueue(self.db, namespace, body["nodes"], body["batch_size"], expose)
        if self.side is not None:
            answer = await self.side.enqueued(answer, namespace)
        return _json(answer)

    async def executed(self, request: web.Request) -> web.Response:
        self._authorize(request)
        body = bodies.parse_fields(await self._document(request), {"outputs": "dict[]"})
        known = len(self.db.states)  # the states added by this call (no await in between) are its copies
        answer, job = operations.executed(self.db, request.match_info["state_id"], body["outputs"])
        if self.side is not None:
            copies = list(self.db.states)[known:]
            job = self.side.next_states_job([request.match_info["state_id"], *copies], job)
        self._background(job)
        return _json(answer)

    async def errored(self, request: web.Request) -> web.Response:
        self._authorize(request)
        body = bodies.parse_fields(await self._document(request), {"error": "str"})
        return _json(operations.errored(self.db, request.match_info["state_id"], body["error"]))

    async def prune(self, request: web.Request) -> web.Response:
        self._authorize(request)
        body = bodies.parse_fields(await self._document(request), {"data": "dict"})
        return _json(operations.prune(self.db, request.match_info["state_id"], body["data"]))

    async def re_enqueue_after(self, request: web.Request) -> web.Response:
        self._authorize(request)
        body = bodies.parse_fields(await self._document(request), {"enqueue_after": "int>0"})
        state_id = request.match_info["state_id"]
        answer = operations.re_enqueue_after(self.db, state_id, body["enqueue_after"])
        if self.side is not None:
            await self.side.requeued(state_id, body["enqueue_after"], time.time_ns())
        return _json(answer)

    async def secrets(self, request: web.Request) -> web.Response:
        namespace = self._authorize(request)
        return _json(operations.get_secrets(self.db, namespace, request.match_info["state_id"]))

    async def list_runs(self, request: web.Request) -> web.Response:
        namespace = self._authorize(request)
        page, size = _path_int(request, "page"), _path_int(request, "size")
        return _json(runs.list_runs(self.db, namespace, page, size))

    async def graph_structure(self, request: web.Request) -> web.Response:
        namespace = self._authorize(request)
        return _json(runs.graph_structure(self.db, namespace, request.match_info["run_id"]))

    async def node_details(self, request: web.Request) -> web.Response:
        namespace = self._authorize(request)
        info = request.match_info
        return _json(runs.node_details(self.db, namespace, info["graph"], info["run_id"], info["state_id"]))


def build_app(api: Api) -> web.Application:
    """The aiohttp application serving ``api``."""
    app = web.Application(middlewares=[error_middleware])
    app.router.add_routes([
        web.put(f"{PREFIX}/nodes/", api.register_nodes),
        web.put(f"{PREFIX}/graph/{{graph}}", api.upsert_graph),
        web.get(f"{PREFIX}/graph/{{graph}}", api.get_graph),
        web.post(f"{PREFIX}/graph/{{graph}}/trigger", api.trigger),
        web.post(f"{PREFIX}/states/enqueue", api.enqueue),
        web.post(f"{PREFIX}/state/{{state_id}}/executed", api.executed),
        web.post(f"{PREFIX}/state/{{state_id}}/errored", api.errored),
        web.post(f"{PREFIX}/state/{{state_id}}/prune", api.prune),
        web.post(f"{PREFIX}/state/{{state_id}}/re-enqueue-after", api.re_enqueue_after),
        web.get(f"{PREFIX}/state/{{state_id}}/secrets", api.secrets),
        web.get(f"{PREFIX}/runs/{{page}}/{{size}}", api.list_runs),
        web.get(f"{PREFIX}/states/run/{{run_id}}/graph", api.graph_structure),
        web.get(f"{PREFIX}/graph/{{graph}}/run/{{run_id}}/node/{{state_id}}", api.node_details),
    ])
    return app
