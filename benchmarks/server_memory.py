"""The REAL upstream state manager's memory with the state manager side over many runs: RSS per round.

One server process (``uvicorn app.main:app``, one worker) under ``opentelemetry-instrument`` with the
side, exporting to a local OTLP receiver, on SecantusDB: the database is its own process, so the
server's resident memory holds only what the server and the side keep (upstream's in-process
database would keep every document in the server's memory). Each round starts ``--runs`` runs of a
chain of ``--chain`` nodes (tests/helpers/stuck_runs.py's ``Step``) by plain HTTP, 32 at a time, with one
runtime polling; it ends once every run settled and, with the side, every run's outcome span was
received. After each round the server's RSS is read from /proc and printed, with the change from
the first round, and the CPU the server and the database process used in the round, per state. The
RSS should stay flat: nothing the side keeps in memory grows with the runs that settled
(docs/state-manager-side.md, section "What is stored where"). The rounds do slow down, and not from
the side: upstream's enqueue query examines every State on SecantusDB at each poll slot
(benchmarks/upstream_enqueue_scan.py), and every round adds ``--runs`` states to the polled namespace.

Run: ``UPSTREAM_GIT_DIR=... .venv/bin/python benchmarks/server_memory.py [--rounds 10] [--runs 200]
[--chain 1] [--side on|off]``. No assertions: the numbers are the result.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
import uuid
from contextlib import ExitStack

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import aiohttp

from exo_otel.core.ids import format_trace_id
from helpers.otlp_receiver import OtlpHttpReceiver
from helpers.process_cpu import tree_cpu_seconds, tree_rss_bytes
from helpers.servers import UpstreamServerUnderTest
from helpers.stuck_runs import Step, topic_graph, trigger, upsert_chain
from helpers.upstream_harness import Settings, secantus_database, uvicorn_server
from helpers.upstream_side import SIDE_PIP, otel_env, wait_settled
from helpers.upstream_sm import require_upstream

GRAPH = "memory-chain"
MIB = 1024 * 1024


async def main(rounds: int, runs: int, chain: int, side: bool) -> None:
    logging.basicConfig(level=logging.WARNING)  # the runtime logs every poll at INFO otherwise
    try:
        require_upstream()
    except BaseException as skip:  # pytest.skip outside pytest
        raise SystemExit(f"cannot run: {skip}") from None
    with ExitStack() as stack:
        rx = stack.enter_context(OtlpHttpReceiver())
        database = stack.enter_context(secantus_database())
        env = otel_env(rx) if side else {}
        server = stack.enter_context(
            uvicorn_server(Settings(mongo_uri=database.uri), instrument=side, pip=SIDE_PIP.split(), **env)
        )
        under_test = UpstreamServerUnderTest(server)
        namespace = f"memory-{uuid.uuid4().hex[:8]}"
        identifiers = [f"step{index}" for index in range(chain)]
        label = f"side {'on' if side else 'off'}"
        print(f"{label}: the server's RSS after start {tree_rss_bytes(server.pid) / MIB:.1f} MiB", flush=True)
        async with under_test.runtime(namespace, [Step], workers=8), aiohttp.ClientSession() as session:
            await upsert_chain(under_test, namespace, GRAPH, topic_graph(namespace, "Step", identifiers))
            limit = asyncio.Semaphore(32)

            async def one() -> str:
                async with limit:
                    return await trigger(under_test, session, namespace, GRAPH)

            first: float | None = None
            for round_number in range(1, rounds + 1):
                started = time.monotonic()
                cpu_before = tree_cpu_seconds(server.pid)
                database_before = tree_cpu_seconds(database.process.pid)
                run_ids = list(await asyncio.gather(*(one() for _ in range(runs))))
                await wait_settled(server.uri, server.api_key, namespace, run_ids, timeout=3600,
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
                first = first or rss
                states = runs * chain
                print(
                    f"{label}: round {round_number:2d}: {runs} runs ({states} states) settled in "
                    f"{settled:.1f} s ({states / settled:.2f} states/s), outcomes {outcomes}/{runs}, server "
                    f"CPU {1000 * cpu / states:.1f} ms/state, database CPU "
                    f"{1000 * database_cpu / states:.1f} ms/state; RSS {rss:.1f} MiB ({rss - first:+.1f} MiB "
                    f"from round 1)",
                    flush=True,
                )
        print(f"{label}: {len(rx.spans())} spans received in all")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=200, help="runs per round")
    parser.add_argument("--chain", type=int, default=1, help="nodes in the graph's chain")
    parser.add_argument("--side", choices=["on", "off"], default="on")
    arguments = parser.parse_args()
    asyncio.run(main(arguments.rounds, arguments.runs, arguments.chain, arguments.side == "on"))
