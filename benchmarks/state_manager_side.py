"""Throughput of the REAL upstream state manager without and with the state manager side, in one run.

Both servers run from the same venv (exo-otel installed); "without" loads nothing, "with" starts the
app under the launcher's auto-initialisation (the ``exosphere_state_manager`` entry point, spans
exported over OTLP/HTTP to a local receiver), as the deploy stack does. Each round starts ``--runs``
runs of the 11-state test graph (docs/state-manager-side.md, section "How it is tested") at once by
plain HTTP, with one in-process runtime (8 workers, not instrumented), and times them until every
run has settled. Prints, per configuration, states per second (wall) and server CPU per state
(from /proc, robust to other load on the machine), and the ratios. Rounds alternate (without,
with, ...; in the deployment mode without, with, with, without, ...) so that drift hits both alike.

``--deployment workers-4+second`` measures the deploy topology instead, in real processes on SecantusDB
(a MongoDB wire-protocol server in its own process): ``uvicorn --workers 4`` (the runtime polls it)
plus a second server process (the triggers go to it), each under ``opentelemetry-instrument`` with the
side, or plain uvicorn from the same venv without it. Every round starts a fresh database and fresh
servers; the servers reach the database through a counting proxy (tests/helpers/mongo_proxy.py), so it
also prints the database requests per state (the drivers' monitoring left out): until every run
settled, and until the side's last outcome was exported (its claims and closes happen after
upstream's last write), and the requests per second the idle servers make afterwards. CPU is
printed for the servers (every process) and the database apart.

Run: ``UPSTREAM_GIT_DIR=... .venv/bin/python benchmarks/state_manager_side.py [--runs 20] [--rounds 2]
[--deployment in-process|workers-4+second|workers-4|two-servers]``.
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
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from exo_otel.core.ids import format_trace_id
from helpers import upstream_graph as ug
from helpers.mongo_proxy import MONITORING, mongo_counting_proxy
from helpers.otlp_receiver import OtlpHttpReceiver
from helpers.process_cpu import tree_cpu_seconds
from helpers.upstream_harness import Settings, secantus_database
from helpers.upstream_side import (
    AUTO_INIT,
    SIDE_PIP,
    deployment_servers,
    graph_runtime,
    otel_env,
    trigger_runs,
    wait_settled,
)
from helpers.upstream_sm import UpstreamServer, require_upstream, upstream_state_manager

IDLE_SECONDS = 20.0


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


@dataclass
class DeploymentRound:
    seconds: float  # trigger to every run settled
    server_cpu: float  # every server process
    database_cpu: float
    requests_settled: int  # database requests, trigger to settled
    requests_drained: int  # trigger to the side's last outcome out (without the side: settled)
    drain_seconds: float  # settled to the last outcome out
    idle_per_second: float  # database requests per second of the idle servers afterwards
    targets: Counter[str]  # trigger to drained, by "command collection"


async def deployment_round(name: str, side: bool, runs: int, rx: OtlpHttpReceiver) -> DeploymentRound:
    """One load on fresh servers and a fresh database: ``runs`` runs triggered at once by plain HTTP."""
    env = otel_env(rx) if side else {}
    with ExitStack() as stack:
        database = stack.enter_context(secantus_database())
        proxy = stack.enter_context(mongo_counting_proxy(database.uri))
        polled, triggered = stack.enter_context(
            deployment_servers(name, Settings(mongo_uri=proxy.uri), side=side, **env)
        )

        def server_cpu() -> float:
            return sum(tree_cpu_seconds(pid) for pid in {polled.pid, triggered.pid})

        namespace = f"bench-{uuid.uuid4().hex[:8]}"
        async with graph_runtime(polled.uri, polled.api_key, namespace) as (_proxy, client):
            cpu_before, db_cpu_before = server_cpu(), tree_cpu_seconds(database.process.pid)
            requests_before, targets_before = proxy.database_requests(), proxy.targets()
            started = time.perf_counter()
            run_ids = await trigger_runs(client, triggered.uri, polled.api_key, namespace, runs, sdk=False)
            await wait_settled(polled.uri, polled.api_key, namespace, run_ids, timeout=1800)
            settled = time.perf_counter()
            requests_settled = proxy.database_requests() - requests_before
            traces = {format_trace_id(run_id) for run_id in run_ids}
            deadline = settled + 120
            while side and time.perf_counter() < deadline and sum(
                1 for s in rx.spans() if s.name.startswith("settle ") and s.trace_id in traces
            ) < runs:
                await asyncio.sleep(0.2)
            drained = time.perf_counter()
            requests_drained = proxy.database_requests() - requests_before
            targets = proxy.targets() - targets_before
            cpu, db_cpu = server_cpu() - cpu_before, tree_cpu_seconds(database.process.pid) - db_cpu_before
        idle_before = proxy.database_requests()
        await asyncio.sleep(IDLE_SECONDS)
        idle = (proxy.database_requests() - idle_before) / IDLE_SECONDS
    return DeploymentRound(settled - started, cpu, db_cpu, requests_settled, requests_drained,
                           drained - settled, idle, targets)


async def main_deployment(name: str, runs: int, rounds: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    require_upstream_here()
    states = runs * ug.STATES_PER_RUN
    results: dict[str, list[DeploymentRound]] = {"without": [], "with": []}
    with OtlpHttpReceiver() as rx:
        for round_number in range(rounds):
            # without, with, with, without, ...: a drift over the run (the machine's other load) hits both
            for label in ("without", "with")[:: 1 if round_number % 2 == 0 else -1]:
                r = await deployment_round(name, label == "with", runs, rx)
                results[label].append(r)
                print(
                    f"round {round_number + 1} {label:7} the side ({name} on SecantusDB): {runs} runs "
                    f"settled in {r.seconds:.1f} s ({states / r.seconds:.2f} states/s); server CPU "
                    f"{1000 * r.server_cpu / states:.1f} ms/state, database CPU "
                    f"{1000 * r.database_cpu / states:.1f} ms/state; database requests per state "
                    f"{r.requests_settled / states:.2f} to settle, {r.requests_drained / states:.2f} "
                    f"until the last outcome out ({r.drain_seconds:.1f} s later); idle afterwards "
                    f"{r.idle_per_second:.2f} requests/s",
                    flush=True,
                )
    summary: dict[str, dict[str, float]] = {}
    for label, values in results.items():
        median = statistics.median
        summary[label] = {
            "states/s": states / median(v.seconds for v in values),
            "server ms/state": 1000 * median(v.server_cpu for v in values) / states,
            "database ms/state": 1000 * median(v.database_cpu for v in values) / states,
            "requests/state settled": median(v.requests_settled for v in values) / states,
            "requests/state drained": median(v.requests_drained for v in values) / states,
            "idle requests/s": median(v.idle_per_second for v in values),
        }
        print(f"{label:7} the side (medians of {len(values)}): "
              + ", ".join(f"{key} {value:.2f}" for key, value in summary[label].items()))
    added: Counter[str] = Counter()
    for label, sign in (("with", 1), ("without", -1)):
        for r in results[label]:
            for target, n in r.targets.items():
                added[target] += sign * n / len(results[label])
    top = sorted(((n, t) for t, n in added.items() if t.split(" ")[0] not in MONITORING), reverse=True)
    print("database requests per state the side adds, by command and collection: " + ", ".join(
        f"{t} {n / states:+.2f}" for n, t in top if abs(n / states) >= 0.05
    ))
    print("ratio with/without: " + ", ".join(
        f"{key} {summary['with'][key] / summary['without'][key]:.2f}"
        for key in summary["with"] if summary["without"][key]
    ))


def require_upstream_here() -> None:
    try:
        require_upstream()
    except BaseException as skip:  # pytest.skip outside pytest
        raise SystemExit(f"cannot run: {skip}") from None


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="runs started at once per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--deployment", default="in-process",
                        choices=["in-process", "workers-4+second", "workers-4", "two-servers"])
    arguments = parser.parse_args()
    if arguments.deployment == "in-process":
        asyncio.run(main(arguments.runs, arguments.rounds))
    else:
        asyncio.run(main_deployment(arguments.deployment, arguments.runs, arguments.rounds))
