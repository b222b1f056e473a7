"""Serve the unmodified upstream state manager on the in-process database: run inside the server venv.

``python serve.py [--instances N] [--preload module:function ...] [--no-history] [--max-seconds S]``,
with the working directory the upstream ``state-manager`` folder and upstream's settings in the
environment (``STATE_MANAGER_SECRET``, ``SECRETS_ENCRYPTION_KEY``, ``MONGO_URI``: ``mongodb://in-process``
for the in-process database, else a real one).

N uvicorn servers of the one app, on free 127.0.0.1 ports, imitate N server processes sharing one
database: the app's lifespan (beanie, init tasks, the cron scheduler) runs once, before any of them
listens. Prints ``UPSTREAM_SM_URI=http://127.0.0.1:PORT`` per instance once all accept requests, and
nothing else on stdout. Preload hooks run before the app is imported, so an instrumentation can patch
what the app uses when it is built. ``GET /__harness/states?run_id=...`` (no key, not in the OpenAPI
schema) answers every State with the history of its statuses, recorded at each write;
``GET /__harness/documents/{collection}`` the number of documents in one of the database's collections.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import signal
import socket
import sys
import time
from typing import Any

from status_history import StatusHistory

IN_PROCESS_URI = "mongodb://in-process"  # MONGO_URI naming the in-process database (memory_db)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--preload", action="append", default=[], metavar="MODULE:FUNCTION")
    parser.add_argument("--no-history", dest="history", action="store_false")
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="stop by itself after; 0: never")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    if args.instances < 1:
        parser.error("--instances must be at least 1")
    return args


def _run_preloads(hooks: list[str]) -> None:
    for hook in hooks:
        module_name, _, function_name = hook.partition(":")
        function = getattr(importlib.import_module(module_name), function_name)
        if asyncio.iscoroutinefunction(function):
            raise SystemExit(f"[harness] preload {hook} is async; a plain function is needed")
        function()


def _add_states_route(app: Any, history: StatusHistory | None) -> None:
    from fastapi import Query

    async def states(run_id: str | None = Query(default=None)) -> dict[str, Any]:
        if history is None:
            return {"enabled": False, "states": []}
        return {"enabled": True, "states": history.states(run_id)}

    app.add_api_route("/__harness/states", states, methods=["GET"], include_in_schema=False)

    async def documents(collection: str) -> dict[str, Any]:
        from app.models.db.state import State

        database = State.get_pymongo_collection().database
        return {"collection": collection, "count": await database[collection].count_documents({})}

    app.add_api_route(
        "/__harness/documents/{collection}", documents, methods=["GET"], include_in_schema=False
    )


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


async def _serve(app: Any, args: argparse.Namespace, history: StatusHistory | None) -> None:
    import uvicorn
    from uvicorn.lifespan.on import LifespanOn

    lifespan = LifespanOn(uvicorn.Config(app, lifespan="on", log_level=args.log_level))
    await lifespan.startup()
    if lifespan.should_exit:
        raise SystemExit("[harness] the app's startup failed")
    if history is not None:
        from app.models.db.state import State

        history.attach(State.get_pymongo_collection())
    sockets = [_listening_socket() for _ in range(args.instances)]
    servers = [
        uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level=args.log_level,
                                      timeout_graceful_shutdown=5))
        for _ in sockets
    ]
    for server in servers:
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # one handler for all
    pairs = zip(servers, sockets, strict=True)
    tasks = [asyncio.create_task(server.serve(sockets=[sock])) for server, sock in pairs]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    while not all(server.started for server in servers):
        if any(task.done() for task in tasks):
            raise SystemExit("[harness] a server ended before it started")
        await asyncio.sleep(0.01)
    for sock in sockets:
        print(f"UPSTREAM_SM_URI=http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    try:
        await asyncio.wait_for(stop.wait(), timeout=args.max_seconds or None)
    except TimeoutError:
        print(f"[harness] stopping after {args.max_seconds} s", file=sys.stderr)
    for server in servers:
        server.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)
    await lifespan.shutdown()


def main() -> None:
    args = _parse()
    sys.path.insert(0, os.getcwd())
    if os.environ.get("MONGO_URI", IN_PROCESS_URI) == IN_PROCESS_URI:
        import memory_db

        memory_db.install()
    history = StatusHistory() if args.history else None
    _run_preloads(args.preload)
    started = time.monotonic()
    from app.main import app  # the unmodified upstream app

    _add_states_route(app, history)
    asyncio.run(_serve(app, args, history))
    print(f"[harness] served for {time.monotonic() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
