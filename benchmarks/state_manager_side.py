"""Throughput of the REAL upstream state manager without and with the state manager side, in one run.

Both servers run from the same venv (exo-otel installed); "without" loads nothing, "with" starts the
app under the launcher's auto-initialisation (the ``exosphere_state_manager`` entry point, spans
exported over OTLP/HTTP to a local receiver), as the deploy stack does. Each round starts ``--runs``
runs of the 11-state test graph (docs/state-manager-side.md, section "How it is tested") at once by
plain HTTP, with one in-process runtime (8 workers, not instrumented), and times them until every
run has settled. Prints, per configuration, states per second (wall) and server CPU per state
(from /proc, robust to other load on the machine), and the ratios. Rounds alternate (without,
with, ...) so that drift hits both alike.

Run: ``UPSTREAM_GIT_DIR=... .venv/bin/python benchmarks/state_manager_side.py [--runs 20] [--rounds 2]``.
No assertions: the numbers depend on the machine (and the in-memory MongoDB stand-in scans linearly).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import time
import uuid
from contextlib import ExitStack

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from helpers import upstream_graph as ug
from helpers.otlp_receiver import OtlpHttpReceiver
from helpers.upstream_side import AUTO_INIT, SIDE_PIP, graph_runtime, otel_env, trigger_runs, wait_settled
from helpers.upstream_sm import UpstreamServer, require_upstream, upstream_state_manager


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def server_pid(server: UpstreamServer) -> int:
    """The harness starts serve.py itself: the process it started is the server."""
    return server.process.pid


async def one_round(server: UpstreamServer, runs: int) -> tuple[float, float]:
    """(seconds, server CPU seconds) for ``runs`` runs started at once, until all settled."""
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    async with graph_runtime(server.uri, server.api_key, namespace) as (_proxy, client):
        cpu_before = cpu_seconds(server_pid(server))
        started = time.perf_counter()
        run_ids = await trigger_runs(client, server.uri, server.api_key, namespace, runs, sdk=False)
        await wait_settled(server.uri, server.api_key, namespace, run_ids, timeout=1800)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(server_pid(server)) - cpu_before
    return elapsed, cpu


async def main(runs: int, rounds: int) -> None:
    # The runtime logs every poll and state at INFO unless logging is configured.
    logging.basicConfig(level=logging.WARNING)
    require_upstream_here()
    with ExitStack() as stack:
        rx = stack.enter_context(OtlpHttpReceiver())
        plain = stack.enter_context(upstream_state_manager(pip=SIDE_PIP, history=False))
        side = stack.enter_context(
            upstream_state_manager(pip=SIDE_PIP, preload=AUTO_INIT, history=False, **otel_env(rx))
        )
        results: dict[str, list[tuple[float, float]]] = {"without": [], "with": []}
        for round_number in range(rounds):
            for label, server in (("without", plain), ("with", side)):
                elapsed, cpu = await one_round(server, runs)
                results[label].append((elapsed, cpu))
                print(
                    f"round {round_number + 1} {label:7} the side: {runs} runs in {elapsed:.1f} s, "
                    f"server CPU {cpu:.1f} s",
                    flush=True,
                )
        states = runs * ug.STATES_PER_RUN
        summary = {}
        for label, values in results.items():
            wall = statistics.median(v[0] for v in values)
            cpu = statistics.median(v[1] for v in values)
            summary[label] = (states / wall, 1000 * cpu / states)
            print(
                f"{label:7} the state manager side: {states / wall:7.1f} states/s (wall), "
                f"{1000 * cpu / states:6.2f} ms server CPU per state"
            )
        spans = len(rx.spans())
        print(
            f"ratio with/without: throughput {summary['with'][0] / summary['without'][0]:.2f}, "
            f"server CPU per state {summary['with'][1] / summary['without'][1]:.2f} "
            f"({spans} spans exported by the side)"
        )


def require_upstream_here() -> None:
    try:
        require_upstream()
    except BaseException as skip:  # pytest.skip outside pytest
        raise SystemExit(f"cannot run: {skip}") from None


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="runs started at once per round")
    parser.add_argument("--rounds", type=int, default=2)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.runs, arguments.rounds))
