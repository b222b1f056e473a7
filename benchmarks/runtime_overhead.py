"""exo_otel's CPU cost per node execution against the SDK's own floor, the runtime in a process of its own.

Run: ``.venv/bin/python benchmarks/runtime_overhead.py`` (``make bench``). No assertions: it prints numbers.

Set-up: the embedded state manager in one process (``exo-otel state-manager``), an OTLP/HTTP sink in this
one (it answers 200 to every export, so the runtime really encodes and sends OTLP), and for every round a
fresh runtime process (``overhead_runtime.py``) in one of three modes: ``plain`` (no exo_otel), ``spans``
(exo_otel with an SDK tracer provider, BatchSpanProcessor, OTLP exporter; no SDK meter provider) and
``metrics`` (the same plus an SDK meter provider, default exemplar filter, OTLP metric exporter). Logging is
at INFO with exo_otel's correlation fields in the format, as a deployed runtime logs. Rounds alternate the
modes (the order rotates every round); every round triggers the same workload: ``--runs`` runs of a 3-node
chain at once, from this process.

Measured: the runtime process's own CPU time (``time.process_time``) from GO until its telemetry is flushed,
per node execution, median and spread over rounds; the added CPU against ``plain``; the SDK floor, measured
in the same runtime process right after its round: the spans (names, kinds, attributes, links, events,
status) exo_otel made for one state, replayed with the SDK alone, plus the metric records exo_otel makes per
state in ``metrics`` mode (2 histogram records with the execute span current, so exemplars in a sampled
run; 1 counter add outside any span; the in-flight gauge is observed at collection, not per state); their
ratio; and the throughput ratio (states per second) against ``plain``. ``--work-ms 1`` makes every node
busy the CPU 1 ms.

Every figure is a median over rounds, printed with its rounds' spread (min, max). A median whose rounds span
more than 20% of it (or that is not positive) is marked "spread too wide to conclude": on a shared machine
such a figure cannot tell a 20% change from noise (``benchmarks/exact_cost.py`` counts instructions instead).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import aiohttp
from exospherehost import GraphNodeModel, StateManager, StoreConfigModel

HERE = Path(__file__).resolve().parent
NAMESPACE = "exo-otel-bench"
GRAPH = "chain"
MODES = ("plain", "spans", "metrics", "sdk-spans", "sdk-metrics")
STATES_PER_RUN = 3


class _Sink(BaseHTTPRequestHandler):
    """Accepts every OTLP/HTTP export (an empty protobuf answer is a full success)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


def chain() -> list[GraphNodeModel]:
    """one -> two -> three, each passing ``value`` on; the trigger's store gives it."""
    ids, names = ["one", "two", "three"], ["StepOne", "StepTwo", "StepThree"]
    nodes = []
    for index, (name, identifier) in enumerate(zip(names, ids, strict=True)):
        source = "${{ store.value }}" if index == 0 else f"${{{{ {ids[index - 1]}.outputs.value }}}}"
        nodes.append(GraphNodeModel(node_name=name, namespace=NAMESPACE, identifier=identifier,
                                    inputs={"value": source}, next_nodes=ids[index + 1:index + 2]))
    return nodes


@dataclass
class Samples:
    cpu_per_state: list[float] = field(default_factory=list)
    states_per_s: list[float] = field(default_factory=list)
    floor_per_state: list[float] = field(default_factory=list)


def start_state_manager(key: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "exo_otel_demo.cli", "state-manager", f"--api-key={key}",
                             "--expose-run-context"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("EXOSPHERE_STATE_MANAGER_URI="):
            return proc, line.strip().split("=", 1)[1]
    raise RuntimeError(f"the state manager ended early (rc={proc.wait()})")


async def one_round(mode: str, args: argparse.Namespace, uri: str, key: str, sink: str,
                    client: StateManager) -> dict[str, float]:
    env = {**os.environ, "EXO_OTEL_BENCH_WORK_MS": str(args.work_ms),
           "EXO_OTEL_BENCH_BREAKDOWN": "1" if args.breakdown else "0"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "overhead_runtime.py"), f"--mode={mode}", f"--uri={uri}", f"--key={key}",
        f"--sink={sink}", f"--workers={args.workers}", f"--floor-states={args.runs * STATES_PER_RUN}",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert (await asyncio.wait_for(proc.stdout.readline(), 60)).strip() == b"READY"
        # The nodes are registered now: the graph validates.
        store_config = StoreConfigModel(required_keys=["value"])
        await client.upsert_graph(GRAPH, chain(), {}, store_config=store_config, polling_interval=0.05)
        proc.stdin.write(b"GO\n")
        await proc.stdin.drain()
        started = time.perf_counter()
        semaphore = asyncio.Semaphore(16)

        async def trigger() -> str:
            async with semaphore:
                return str((await client.trigger(GRAPH, store={"value": uuid.uuid4().hex}))["run_id"])

        run_ids = set(await asyncio.gather(*(trigger() for _ in range(args.runs))))
        await wait_for_runs(uri, key, run_ids)
        elapsed = time.perf_counter() - started
        proc.stdin.write(b"STOP\n")
        await proc.stdin.drain()
        result = json.loads(await asyncio.wait_for(proc.stdout.readline(), 120))
        if mode in ("spans", "metrics"):  # the replayed floor follows
            result.update(json.loads(await asyncio.wait_for(proc.stdout.readline(), 300)))
        result["elapsed_s"] = elapsed
        return dict(result)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def wait_for_runs(uri: str, key: str, run_ids: set[str]) -> None:
    """Until none of the runs is PENDING, through the runs API (the newest ``len(run_ids)`` runs are ours)."""
    url = f"{uri}/v0/namespace/{NAMESPACE}/runs/1/{len(run_ids)}"
    async with aiohttp.ClientSession(headers={"x-api-key": key}) as session:
        while True:
            async with session.get(url) as response:
                runs = (await response.json())["runs"]
            statuses = {run["run_id"]: run["status"] for run in runs}
            if all(statuses.get(run_id) not in (None, "PENDING") for run_id in run_ids):
                return
            await asyncio.sleep(0.02)


WIDEST_SPREAD = 0.20
"""The widest spread of rounds, (max - min) / median, at which a median still says something."""


def verdict(values: list[float]) -> str:
    """Whether the median of these rounds can be concluded from: their spread against it."""
    median = statistics.median(values)
    if len(values) < 2:
        return "one round: spread unknown, nothing to conclude"
    if median <= 0:
        return "median not positive: spread too wide to conclude"
    width = (max(values) - min(values)) / median
    if width > WIDEST_SPREAD:
        return f"rounds span {width:.0%} of the median: spread too wide to conclude"
    return f"rounds span {width:.0%} of the median"


def spread(values: list[float], scale: float) -> str:
    return (f"median {statistics.median(values) * scale:8.1f}  "
            f"(min {min(values) * scale:.1f}, max {max(values) * scale:.1f}; {verdict(values)})")


def ratio_spread(values: list[float]) -> str:
    return (f"median {statistics.median(values):.2f}  (min {min(values):.2f}, max {max(values):.2f}; "
            f"{verdict(values)})")


async def main(args: argparse.Namespace) -> None:
    key = uuid.uuid4().hex
    sink_server = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink_server.serve_forever, daemon=True).start()
    sink = f"http://127.0.0.1:{sink_server.server_address[1]}"
    samples = {mode: Samples() for mode in MODES}
    try:
        for index in range(args.rounds + 1):  # round 0 warms up (imports, caches) and is not counted
            order = MODES[index % len(MODES):] + MODES[:index % len(MODES)]
            for mode in order:
                # A fresh state manager for every round: one that kept every earlier round's states
                # would answer ever more slowly, and the modes would not see the same server.
                sm_proc, uri = start_state_manager(key)
                try:
                    client = StateManager(namespace=NAMESPACE, state_manager_uri=uri, key=key)
                    result = await one_round(mode, args, uri, key, sink, client)
                finally:
                    sm_proc.terminate()
                    sm_proc.wait(10)
                if index == 0:
                    continue
                states = args.runs * STATES_PER_RUN
                samples[mode].cpu_per_state.append(result["cpu_s"] / states)
                samples[mode].states_per_s.append(states / result["elapsed_s"])
                if "floor_cpu_s" in result:
                    samples[mode].floor_per_state.append(result["floor_cpu_s"] / result["floor_states"])
    finally:
        sink_server.shutdown()
    report(args, samples)


def report(args: argparse.Namespace, samples: dict[str, Samples]) -> None:
    us = 1e6
    print(f"workload: {args.rounds} rounds per mode (alternated), "
          f"{args.runs} runs of a 3-node chain at once, "
          f"{args.workers} workers, nodes busy {args.work_ms} ms")
    print("set-up: runtime in its own process; embedded state manager (run context in the enqueue answer) in "
          "another; OTLP/HTTP to a local sink; logging at INFO")
    plain = statistics.median(samples["plain"].cpu_per_state)
    plain_rate = statistics.median(samples["plain"].states_per_s)
    plain_rates = samples["plain"].states_per_s
    print(f"plain    runtime CPU per execution (us): {spread(samples['plain'].cpu_per_state, us)}")
    for mode in ("spans", "metrics"):
        s = samples[mode]
        added = statistics.median(s.cpu_per_state) - plain
        floor = statistics.median(s.floor_per_state)
        added_by_round = [c - p for c, p in zip(s.cpu_per_state, samples["plain"].cpu_per_state, strict=True)]
        sdk = samples[f"sdk-{mode}"]
        in_place = [c - p for c, p in zip(sdk.cpu_per_state, samples["plain"].cpu_per_state, strict=True)]
        in_place_floor = statistics.median(sdk.cpu_per_state) - plain
        print(f"{mode:8} runtime CPU per execution (us): {spread(s.cpu_per_state, us)}")
        print(f"{mode:8}   added CPU per execution (us): {added * us:8.1f}  (by round: "
              f"{', '.join(f'{a * us:.1f}' for a in added_by_round)}; {verdict(added_by_round)})")
        print(f"{mode:8}   SDK floor per execution (us): {spread(s.floor_per_state, us)}  (replayed)")
        by_round = [a / f for a, f in zip(added_by_round, s.floor_per_state, strict=True)]
        print(f"{mode:8}   added / floor: {added / floor:.2f}   (by round: "
              f"{', '.join(f'{r:.2f}' for r in by_round)}; {verdict(by_round)})")
        print(f"{mode:8}   in-place SDK floor per execution (us): {in_place_floor * us:8.1f}  (by round: "
              f"{', '.join(f'{f * us:.1f}' for f in in_place)}; {verdict(in_place)})")
        by_round = [a / f for a, f in zip(added_by_round, in_place, strict=True)]
        print(f"{mode:8}   added / in-place floor: {added / in_place_floor:.2f}   (by round: "
              f"{', '.join(f'{r:.2f}' for r in by_round)}; {verdict(by_round)})")
        # The least code making the same SDK calls in the runtime, against the same calls in a warm loop:
        # what the runtime's cold caches and interleaving add to the SDK's calls, whoever makes them.
        room = (1.5 * floor - in_place_floor) * us
        print(f"{mode:8}   in-place floor / replayed floor: {in_place_floor / floor:.2f}   (room at 1.5x the "
              f"replayed floor for all exo_otel does beyond the SDK calls: {room:.1f} us)")
        print(f"{mode:8}   throughput ratio to plain: {statistics.median(s.states_per_s) / plain_rate:.3f}  "
              f"(states/s: plain {plain_rate:.0f}, {mode} {statistics.median(s.states_per_s):.0f}, "
              f"sdk-{mode} {statistics.median(sdk.states_per_s):.0f})")
        rates = [r / p for r, p in zip(s.states_per_s, plain_rates, strict=True)]
        print(f"{mode:8}   throughput ratio to plain by round: {ratio_spread(rates)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="runs triggered at once per round")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per mode")
    parser.add_argument("--work-ms", type=float, default=0.0, help="CPU time each node spends, in ms")
    parser.add_argument("--breakdown", action="store_true",
                        help="time the parts in the runtime (overhead_breakdown.py; the timers cost CPU)")
    asyncio.run(main(parser.parse_args()))
