"""The REAL upstream state manager's memory with the state manager side over many runs: RSS per round.

One server process (``uvicorn app.main:app``, one worker) under ``opentelemetry-instrument`` with the
side, exporting to a local OTLP receiver, on SecantusDB: the database is its own process, so the
server's resident memory holds only what the server and the side keep (upstream's in-process
database would keep every document in the server's memory). Each round starts ``--runs`` runs of a
chain of ``--chain`` nodes (tests/helpers/stuck_runs.py's ``Step``) by plain HTTP, 32 at a time, with one
runtime polling; it ends once every run settled (within ``--settle-timeout`` seconds, each request
included; past it the error names the runs not settled) and, with the side, every run's outcome span
was received. After each round the server's RSS is read from /proc and printed, with the change from
rounds 1 and 2, and the CPU the server and the database process used in the round, per state; at the
end, over rounds 3 to the last, the RSS's range and its least-squares slope. The RSS should stay flat:
nothing the side keeps in memory grows with the runs that settled (docs/state-manager-side.md,
section "What is stored where").

Between rounds the settled round's State documents are deleted from the database (not with
``--keep-states``): upstream's enqueue query examines every State on SecantusDB at each poll slot
(benchmarks/upstream_enqueue_scan.py; its index starts with ``enqueue_after``, so a fresh namespace per
round would not shorten the scan), so with them kept every round polls a larger collection and the
tenth round of 200 takes many minutes. The server keeps no State in its memory; exo_otel's own records
(``exo_otel_runs``, claims) are left as they are.

``--trace-malloc`` serves the app through tests/helpers/memory_probe.py (``tracemalloc``, 8 frames: the
server runs slower and its RSS is higher) and takes a snapshot after every round; at the end it prints
what grew from the snapshot after round 2 to the last one, by file and by allocation site.

Run: ``UPSTREAM_GIT_DIR=... .venv/bin/python benchmarks/server_memory.py [--rounds 10] [--runs 200]
[--chain 1] [--side on|off] [--keep-states] [--trace-malloc] [--settle-timeout 1800]``. No assertions:
the numbers are the result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import aiohttp

from exo_otel.core.ids import format_trace_id
from exo_otel.server.mongo_store import CLAIMS_COLLECTION, NOTES_COLLECTION, RUNS_COLLECTION
from exo_otel.server.sweeper import RETENTION_ENV
from helpers import TESTS_DIR
from helpers.otlp_receiver import OtlpHttpReceiver
from helpers.process_cpu import tree_cpu_seconds, tree_rss_bytes
from helpers.servers import UpstreamServerUnderTest
from helpers.stuck_runs import Step, topic_graph, trigger, upsert_chain
from helpers.upstream_harness import Settings, secantus_database, uvicorn_server
from helpers.upstream_harness.venvs import server_python
from helpers.upstream_side import SIDE_PIP, otel_env, wait_settled
from helpers.upstream_sm import require_upstream

GRAPH = "memory-chain"
COLLECTIONS = (RUNS_COLLECTION, CLAIMS_COLLECTION, NOTES_COLLECTION)
MIB = 1024 * 1024
SNAPSHOT_DIR = "EXO_OTEL_SNAPSHOT_DIR"  # where helpers.memory_probe writes (not importable here)
# Run with the server venv's python (pymongo): "delete" the State documents of the runs read from stdin,
# or "count" the documents of each exo_otel collection; prints a JSON answer.
_DATABASE_SCRIPT = """
import json, sys, pymongo
database = pymongo.MongoClient(sys.argv[1])[sys.argv[2]]
if sys.argv[3] == "delete":
    print(database["State"].delete_many({"run_id": {"$in": json.load(sys.stdin)}}).deleted_count)
else:
    print(json.dumps({name: database[name].count_documents({}) for name in sys.argv[4:]}))
"""


def in_database(settings: Settings, action: str, *args: str, stdin: str = "") -> Any:
    python = server_python(SIDE_PIP.split())
    command = [str(python), "-c", _DATABASE_SCRIPT, settings.mongo_uri, settings.database_name, action, *args]
    done = subprocess.run(command, input=stdin, capture_output=True, text=True, check=True, timeout=600)
    return json.loads(done.stdout)


def record_counts(settings: Settings) -> str:
    counts = in_database(settings, "count", *COLLECTIONS)
    return ", ".join(f"{name} {count}" for name, count in counts.items())


def snapshot(pid: int, folder: Path, number: int, timeout: float = 600.0) -> None:
    """Have the server (helpers.memory_probe) write snapshot ``number``; wait until it is whole."""
    os.kill(pid, signal.SIGUSR1)
    done = folder / "done"
    deadline = time.monotonic() + timeout
    while not (done.exists() and str(number) in done.read_text().split()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server wrote no snapshot {number} within {timeout} s")
        time.sleep(0.2)


def _short(filename: str) -> str:
    for marker in ("site-packages/", "python3.12/", "state-manager/", "src/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def print_growth(folder: Path, first: int, last: int) -> None:
    """What the server's traced allocations gained from snapshot ``first`` to ``last``: in all, with an
    exo_otel frame in the allocation's stack or none, by file and by allocation site (growth first)."""
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__),
              tracemalloc.Filter(False, "<frozen importlib._bootstrap>")]
    before = tracemalloc.Snapshot.load(str(folder / f"{first}.tracemalloc")).filter_traces(ignore)
    after = tracemalloc.Snapshot.load(str(folder / f"{last}.tracemalloc")).filter_traces(ignore)
    sites = after.compare_to(before, "traceback")
    ours = sum(s.size_diff for s in sites if any("/exo_otel/" in f.filename for f in s.traceback))
    total = sum(s.size_diff for s in sites)
    print(f"traced allocations from round {first} to round {last}: {total / MIB:+.3f} MiB in all, "
          f"{ours / MIB:+.3f} MiB with an exo_otel frame in their stack")
    print("by file of the allocating line (largest growth first):")
    for stat in sorted(after.compare_to(before, "filename"), key=lambda s: -s.size_diff)[:12]:
        where = _short(stat.traceback[0].filename)
        print(f"  {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks  {where}")
    print("by allocation site, with its callers (innermost first):")
    for stat in sorted(sites, key=lambda s: -s.size_diff)[:10]:
        frames = " < ".join(f"{_short(f.filename)}:{f.lineno}" for f in list(stat.traceback)[::-1][:5])
        print(f"  {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks  {frames}")


def fit(values: list[float]) -> float:
    """The least-squares slope of ``values`` against 0, 1, 2, ..."""
    n = len(values)
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    spread = sum((x - mean_x) ** 2 for x in range(n))
    return sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values)) / spread if spread else 0.0


async def main(
    rounds: int, runs: int, chain: int, side: bool, keep_states: bool, trace_malloc: bool,
    settle_timeout: float, retention: float | None, linger: float,
) -> None:
    logging.basicConfig(level=logging.WARNING)  # the runtime logs every poll at INFO otherwise
    try:
        require_upstream()
    except BaseException as skip:  # pytest.skip outside pytest
        raise SystemExit(f"cannot run: {skip}") from None
    with ExitStack() as stack:
        rx = stack.enter_context(OtlpHttpReceiver())
        database = stack.enter_context(secantus_database())
        env = otel_env(rx) if side else {}
        if retention is not None:
            env = {**env, RETENTION_ENV: str(retention)}
        app = "app.main:app"
        snapshots = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="server-memory-")))
        if trace_malloc:
            app = "helpers.memory_probe:app"
            path = os.environ.get("PYTHONPATH", "")
            python_path = os.pathsep.join(p for p in (str(TESTS_DIR), path) if p)
            env = {**env, SNAPSHOT_DIR: str(snapshots), "PYTHONPATH": python_path}
        settings = Settings(mongo_uri=database.uri)
        server = stack.enter_context(
            uvicorn_server(settings, instrument=side, pip=SIDE_PIP.split(), app=app, **env)
        )
        under_test = UpstreamServerUnderTest(server)
        namespace = f"memory-{uuid.uuid4().hex[:8]}"
        identifiers = [f"step{index}" for index in range(chain)]
        label = f"side {'on' if side else 'off'}{' (tracemalloc)' if trace_malloc else ''}"
        print(f"{label}: the server's RSS after start {tree_rss_bytes(server.pid) / MIB:.1f} MiB", flush=True)
        rss_by_round: list[float] = []
        async with under_test.runtime(namespace, [Step], workers=8), aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=settle_timeout)
        ) as session:
            await upsert_chain(under_test, namespace, GRAPH, topic_graph(namespace, "Step", identifiers))
            limit = asyncio.Semaphore(32)

            async def one() -> str:
                async with limit:
                    return await trigger(under_test, session, namespace, GRAPH)

            for round_number in range(1, rounds + 1):
                started = time.monotonic()
                cpu_before = tree_cpu_seconds(server.pid)
                database_before = tree_cpu_seconds(database.process.pid)
                run_ids = list(await asyncio.gather(*(one() for _ in range(runs))))
                await wait_settled(server.uri, server.api_key, namespace, run_ids, timeout=settle_timeout,
                                   states_per_run=chain)
                settled = time.monotonic() - started
                traces = {format_trace_id(run_id) for run_id in run_ids}
                deadline = time.monotonic() + 120
                outcomes = 0
                while side and time.monotonic() < deadline:
                    received = rx.spans()
                    outcomes = sum(s.name == f"settle {GRAPH}" and s.trace_id in traces for s in received)
                    if outcomes >= runs:
                        break
                    await asyncio.sleep(0.2)
                cpu = tree_cpu_seconds(server.pid) - cpu_before
                database_cpu = tree_cpu_seconds(database.process.pid) - database_before
                rss = tree_rss_bytes(server.pid) / MIB
                rss_by_round.append(rss)
                states = runs * chain
                from_two = f", {rss - rss_by_round[1]:+.1f} from round 2" if round_number > 1 else ""
                print(
                    f"{label}: round {round_number:2d}: {runs} runs ({states} states) settled in "
                    f"{settled:.1f} s ({states / settled:.2f} states/s), outcomes {outcomes}/{runs}, server "
                    f"CPU {1000 * cpu / states:.1f} ms/state, database CPU "
                    f"{1000 * database_cpu / states:.1f} ms/state; RSS {rss:.1f} MiB "
                    f"({rss - rss_by_round[0]:+.1f} MiB from round 1{from_two})",
                    flush=True,
                )
                if trace_malloc:
                    snapshot(server.pid, snapshots, round_number)
                if side:
                    print(f"{label}: round {round_number:2d}: exo_otel's records: {record_counts(settings)}",
                          flush=True)
                if not keep_states:
                    in_database(settings, "delete", stdin=json.dumps(run_ids))
            if linger:
                await asyncio.sleep(linger)
                print(f"{label}: {linger:.0f} s after the last round: RSS "
                      f"{tree_rss_bytes(server.pid) / MIB:.1f} MiB; exo_otel's records: "
                      f"{record_counts(settings) if side else '-'}", flush=True)
        print(f"{label}: {len(rx.spans())} spans received in all")
        later = rss_by_round[2:]
        if len(later) >= 2:
            print(
                f"{label}: rounds 3-{rounds}: RSS {min(later):.1f} to {max(later):.1f} MiB (range "
                f"{max(later) - min(later):.1f} MiB), least-squares slope {fit(later):+.3f} MiB a round"
            )
        if trace_malloc and rounds >= 3:
            print_growth(snapshots, 2, rounds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=200, help="runs per round")
    parser.add_argument("--chain", type=int, default=1, help="nodes in the graph's chain")
    parser.add_argument("--side", choices=["on", "off"], default="on")
    parser.add_argument("--keep-states", action="store_true", help="keep every round's State documents")
    parser.add_argument("--trace-malloc", action="store_true", help="snapshot the server's allocations")
    parser.add_argument("--settle-timeout", type=float, default=1800.0,
                        help="seconds a round's runs may take to settle (each request included)")
    parser.add_argument("--retention", type=float, default=None,
                        help=f"seconds a settled run's records are kept ({RETENTION_ENV}; default 7 days)")
    parser.add_argument("--linger", type=float, default=0.0,
                        help="seconds to wait after the last round (the runtime polling), then RSS, records")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.rounds, arguments.runs, arguments.chain, arguments.side == "on",
                     arguments.keep_states, arguments.trace_malloc, arguments.settle_timeout,
                     arguments.retention, arguments.linger))
