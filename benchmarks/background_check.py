"""The sweep's background check alone, over 10 to 10,000 open runs that never settle: its CPU per check.

What benchmarks/stuck_runs.py measures as a whole server's idle CPU, taken apart: one `Sweeper` over a
`MongoRunStore` on the harness's in-process database (tests/helpers/upstream_harness/memory_db.py,
mongomock under pymongo's async API: every query a linear scan, as in the real server's in-process
tests). The open runs are written as the side and upstream leave a stuck run: its exo_otel_runs
document (ready, open, not touched, its check key), its root claim (final), one State in CREATED.
Then the check is forced ``--checks`` times (its next page, the purge and the take-over of stale claims
due) and the CPU of each pass printed, with the time of each store call it made (where the check's cost
goes); then the sweep loop runs by itself for ``--idle`` seconds (a page every second, the purge and
the take-over every 10 s, a round over the open runs at most every 10 s) and its CPU per idle second is
printed.

``--db secantus`` runs the same over pymongo on a SecantusDB (its own process, real indexes): then the
CPU printed is this process's (the side's own work and pymongo's), and the database process's CPU per
check and per idle second (from /proc, in 10 ms ticks) is printed beside it.

It needs mongomock, pymongo and bson: run it with the server venv's python the harness built (any
``/tmp/exo-otel-upstream/server-*/bin/python``), the worktree's ``src`` and ``tests`` on the path:

``PYTHONPATH=src:tests /tmp/exo-otel-upstream/server-<hash>/bin/python benchmarks/background_check.py
[--open 10 1000 10000] [--checks 20] [--idle 20] [--db memory|secantus] [--profile]``. No assertions: the
numbers are the result.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import datetime
import functools
import pstats
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from bson import ObjectId
from opentelemetry.sdk.trace import TracerProvider

from exo_otel.server.context import new_run_context
from exo_otel.server.mongo_store import CLAIMS_COLLECTION, RUNS_COLLECTION, MongoRunStore
from exo_otel.server.store import check_key
from exo_otel.server.sweeper import Sweeper
from helpers.process_cpu import tree_cpu_seconds
from helpers.upstream_harness import memory_db, secantus_database

# Upstream 0.0.3's indexes on State that the side's queries and these documents meet (app/models/db/state.py).
UPSTREAM_STATE_INDEXES = (
    ([("enqueue_after", 1), ("status", 1), ("namespace_name", 1), ("node_name", 1)], "enqueue_query"),
    ([("run_id", 1), ("status", 1)], "run_id_status_index"),
)
attributing = False  # see timed_store


def timed_store(
    store: MongoRunStore, seconds: dict[str, float], database_seconds: dict[str, float],
    database_cpu: Callable[[], float],
) -> None:
    """Wrap each async method of ``store`` to add its process time to ``seconds`` or, while
    ``attributing`` is set, the database process's CPU meanwhile to ``database_seconds`` (by name)."""
    for name in dir(type(store)):
        method = getattr(store, name)
        if name.startswith("_") or not asyncio.iscoroutinefunction(method):
            continue

        def wrap(inner: Callable[..., Awaitable[Any]], label: str) -> Callable[..., Awaitable[Any]]:
            @functools.wraps(inner)
            async def call(*args: Any, **kwargs: Any) -> Any:
                if not attributing:  # the process time alone (no /proc reads in the checks timed)
                    started = time.process_time()
                    try:
                        return await inner(*args, **kwargs)
                    finally:
                        seconds[label] += time.process_time() - started
                database_before = database_cpu()
                try:
                    return await inner(*args, **kwargs)
                finally:
                    database_seconds[label] += database_cpu() - database_before

            return call

        setattr(store, name, wrap(method, name))


async def add_stuck_runs(database: Any, count: int) -> None:
    """``count`` runs as the side and upstream leave a run whose runtime is gone."""
    now = time.time_ns()
    runs, claims, states = [], [], []
    for index in range(count):
        run = new_run_context(str(uuid.uuid4()), "stuck-ns", "stuck", now + index, None, None)
        runs.append({"_id": run.run_id, **run.to_document(), "ready": True, "open": True,
                     "check_key": check_key(run.run_id)})
        claims.append({"_id": f"root:{run.run_id}", "run_id": run.run_id, "done": True})
        created = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        states.append({"_id": ObjectId(), "run_id": run.run_id, "identifier": "parked", "node_name": "Parked",
                       "namespace_name": "stuck-ns", "graph_name": "stuck", "status": "CREATED",
                       "created_at": created, "updated_at": created, "enqueue_after": 0, "retry_count": 0,
                       "parents": {}, "inputs": {"topic": "t"}, "outputs": {}})
    for collection, documents in ((RUNS_COLLECTION, runs), (CLAIMS_COLLECTION, claims), ("State", states)):
        for start in range(0, len(documents), 1000):
            await database[collection].insert_many(documents[start : start + 1000])


async def main(totals: list[int], checks: int, idle: float, db: str, profile: bool) -> None:
    with contextlib.ExitStack() as stack:
        if db == "secantus":
            import pymongo  # the server venv's

            server = stack.enter_context(secantus_database())
            client: Any = pymongo.AsyncMongoClient(server.uri)
            database_cpu: Callable[[], float] = lambda: tree_cpu_seconds(server.process.pid)  # noqa: E731
        else:
            memory_db.install()
            client = memory_db.MemoryMongoClient()
            database_cpu = lambda: 0.0  # noqa: E731  (in this process: counted in the side's CPU)
        database = client[f"check-{uuid.uuid4().hex[:8]}"]
        await checks_at(database, totals, checks, idle, db, database_cpu, profile)
        if db == "secantus":
            await client.close()


async def checks_at(
    database: Any, totals: list[int], checks: int, idle: float, db: str, database_cpu: Callable[[], float],
    profile: bool,
) -> None:
    store = MongoRunStore(lambda: database["State"])
    seconds: dict[str, float] = defaultdict(float)
    database_seconds: dict[str, float] = defaultdict(float)
    timed_store(store, seconds, database_seconds, database_cpu)
    sweeper = Sweeper(store, TracerProvider().get_tracer("background-check"))
    await store.ensure_indexes()
    for keys, name in UPSTREAM_STATE_INDEXES:  # as upstream's State model declares them (beanie makes them)
        await database["State"].create_index(keys, name=name)
    opened = 0
    first: float | None = None
    for total in totals:
        await add_stuck_runs(database, total - opened)
        opened = total
        seconds.clear()
        database_seconds.clear()
        profiler = cProfile.Profile() if profile else None
        per_check = []
        database_before = database_cpu()
        for _ in range(checks):
            sweeper._next_page = sweeper._next_upkeep = 0.0  # the check is due
            started = time.process_time()
            if profiler is not None:
                profiler.enable()
            await sweeper.sweep_once()
            if profiler is not None:
                profiler.disable()
            per_check.append(time.process_time() - started)
        database_ms = (database_cpu() - database_before) / checks * 1e3
        if db == "secantus":  # the same checks again, the database's CPU read around each store call
            global attributing
            attributing = True
            for _ in range(checks):
                sweeper._next_page = sweeper._next_upkeep = 0.0
                await sweeper.sweep_once()
            attributing = False
        # The loop by itself, idle: its CPU (and the database's) per second.
        idle_started, idle_database = time.process_time(), database_cpu()
        passes = sweeper.stats.passes
        sweeper.start()
        await asyncio.sleep(idle)
        sweeper.stop()
        idle_ms = (time.process_time() - idle_started) / idle * 1e3
        idle_database_ms = (database_cpu() - idle_database) / idle * 1e3
        idle_passes = sweeper.stats.passes - passes
        per_check.sort()
        median = per_check[len(per_check) // 2] * 1e3
        first = first or median
        by_call = sorted(seconds.items(), key=lambda item: -item[1])
        calls = ", ".join(f"{name} {1e3 * spent / checks:.2f}" for name, spent in by_call)
        on_db = ""
        if db == "secantus":
            by_call = sorted(database_seconds.items(), key=lambda item: -item[1])
            in_calls = ", ".join(f"{name} {1e3 * spent / checks:.1f}" for name, spent in by_call if spent)
            on_db = (f"; the database process {database_ms:.1f} ms CPU per check (during {in_calls}), "
                     f"{idle_database_ms:.2f} ms per idle second")
        print(f"{db}: {total} open runs: background check {median:.2f} ms CPU (median of {checks}; "
              f"min {per_check[0] * 1e3:.2f}, max {per_check[-1] * 1e3:.2f}; x{median / first:.2f} of the "
              f"first); idle {idle:.0f} s: {idle_passes} passes, {idle_ms:.3f} ms CPU per second{on_db}; "
              f"per check, ms: {calls}", flush=True)
        if profiler is not None:
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--open", type=int, nargs="+", default=[10, 1000, 10000])
    parser.add_argument("--checks", type=int, default=20)
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of the loop left to itself")
    parser.add_argument("--db", choices=["memory", "secantus"], default="memory")
    parser.add_argument("--profile", action="store_true", help="cProfile the checks at each count")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.open, arguments.checks, arguments.idle, arguments.db, arguments.profile))
