"""Milliseconds from a state's arrival in a runtime's queue to its node's ``execute()``, for a runtime's
first 5 states, plain and with exo_otel's SDK side loaded (its defaults: placement ``auto``,
placement wait 250 ms).

Each round is a fresh embedded state manager on 127.0.0.1 and a fresh runtime (4 workers, polls every
0.05 s) started with ``Runtime.start()`` through a loopback proxy that passes the run API calls
(healthy), delays each by 2 s (slow), or drops their connection with no answer (refused); a fourth
set-up has the embedded server's state manager side (the run's carrier in every enqueue answer,
so runtimes never look a run up). Five runs of a one-node graph are triggered one after the other,
each once the one before has settled, so every state is the first of its run: the case where a
runtime knows nothing of the run when a worker takes the state. Arrival is when the runtime's poll
loop puts the state in the queue (timed by a wrapper on that queue's ``put``); ``execute()`` times
itself. "placed" counts the states whose ``execute`` span is in their run's trace (instrumented only).
With ``--chain``, one run of 5 chained nodes instead: the states after the first are of a run the
runtime knows already.

Run: ``.venv/bin/python benchmarks/queue_to_execute.py [--rounds 3]``. Medians over rounds. No assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import statistics
import sys
import time
import uuid
from typing import Any

from exospherehost import BaseNode, GraphNodeModel, Runtime, StateManager
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from exo_otel.core.ids import trace_id_for_run
from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from exo_otel_demo.embedded import EmbeddedStateManager
from helpers.http_proxy import RunApiMode, counting_proxy

NAMESPACE = "latency"
GRAPH = "one-node"
STATES = 5
# (label, run API mode, its delay, the embedded server's state manager side)
CONDITIONS: list[tuple[str, RunApiMode, float, bool]] = [
    ("run APIs healthy", "pass", 0.0, False),
    ("run APIs slow (2 s)", "slow", 2.0, False),
    ("run APIs refused", "refuse", 0.0, False),
    ("state manager side", "pass", 0.0, True),
]
ENTERED: dict[str, float] = {}


async def wait_until(predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.01)


class Probe(BaseNode):
    class Inputs(BaseModel):
        tag: str

    class Outputs(BaseModel):
        tag: str

    async def execute(self) -> BaseNode.Outputs:
        ENTERED[self.inputs.tag] = time.perf_counter()
        return self.Outputs(tag=self.inputs.tag + "+")  # the next state of a chain gets a tag of its own


def graph(chain: bool) -> list[GraphNodeModel]:
    """One node, or ``STATES`` nodes in a chain (each state's tag its upstream's with a ``+``)."""
    if not chain:
        return [GraphNodeModel(node_name="Probe", namespace=NAMESPACE, identifier="probe",
                               inputs={"tag": "none"})]
    return [
        GraphNodeModel(node_name="Probe", namespace=NAMESPACE, identifier=f"p{i}",
                       inputs={"tag": "none" if i == 0 else f"${{{{ p{i - 1}.outputs.tag }}}}"},
                       next_nodes=[f"p{i + 1}"] if i + 1 < STATES else None)
        for i in range(STATES)
    ]


async def one_round(
    condition: tuple[str, RunApiMode, float, bool], mode: str, chain: bool = False
) -> tuple[list[float], int]:
    """The first states' arrival-to-execute times (ms), and how many were placed in their run's trace."""
    _label, run_api, delay_s, server_side = condition
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = ExosphereInstrumentor()
    if mode != "plain":
        instrumentor.instrument(tracer_provider=provider, placement_wait_ms=0 if mode == "wait 0" else None)
    arrived: dict[str, float] = {}
    run_ids: list[str] = []
    tags: list[str] = []
    try:
        async with (
            EmbeddedStateManager(server_side=server_side, tracer_provider=provider) as sm,
            counting_proxy(sm.uri, run_api, hang_s=delay_s) as proxy,
        ):
            runtime = Runtime(namespace=NAMESPACE, name="latency-runtime", nodes=[Probe],
                              state_manager_uri=proxy.uri, key=sm.api_key, poll_interval=0.05)  # type: ignore[arg-type]
            queue = runtime._state_queue
            put = queue.put

            async def timed_put(state: Any) -> None:
                arrived[state["inputs"]["tag"]] = time.perf_counter()
                await put(state)

            queue.put = timed_put  # type: ignore[method-assign]
            task = runtime.start()
            assert task is not None
            try:
                await wait_until(lambda: "Probe" in sm.registered_nodes(NAMESPACE))
                client = StateManager(namespace=NAMESPACE, state_manager_uri=sm.uri, key=sm.api_key)
                await client.upsert_graph(GRAPH, graph(chain), {})  # type: ignore[arg-type]
                for _ in range(1 if chain else STATES):
                    tag = uuid.uuid4().hex
                    tags.extend([tag + "+" * i for i in range(STATES)] if chain else [tag])
                    run_ids.append((await client.trigger(GRAPH, inputs={"tag": tag}))["run_id"])
                    await wait_until(lambda: sm.run_status(run_ids[-1]) != "PENDING")
                await asyncio.sleep(0.2)  # the worker ends its spans just after reporting
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        if mode != "plain":
            instrumentor.uninstrument()
        provider.shutdown()
    traces = {trace_id_for_run(run_id) for run_id in run_ids}
    placed = sum(1 for span in exporter.get_finished_spans()
                 if span.name.startswith("execute ") and span.context.trace_id in traces)
    return [(ENTERED[tag] - arrived[tag]) * 1000 for tag in tags], placed


async def main(rounds: int, chain: bool) -> None:
    modes = ["plain", "instrumented", "wait 0"]
    results: dict[tuple[str, str], list[tuple[list[float], int]]] = {}
    for _ in range(rounds):  # interleaved, so drift in the machine's load hits every mode alike
        for condition in CONDITIONS:
            for mode in modes:
                if mode == "wait 0" and condition[1] != "pass":
                    continue
                results.setdefault((condition[0], mode), []).append(await one_round(condition, mode, chain))
    what = "one run of 5 chained nodes" if chain else "each the first of its run"
    print(f"ms from a state's arrival in the queue to execute(), first {STATES} states of a runtime "
          f"({what}), median of {rounds} rounds; 'wait 0': placement_wait_ms=0")
    print("| set-up | exo_otel | " + " | ".join(f"state {i + 1}" for i in range(STATES)) + " | placed |")
    print("|---|---|" + "---|" * STATES + "---|")
    for condition in CONDITIONS:
        for mode in modes:
            rows = results.get((condition[0], mode))
            if rows is None:
                continue
            cells = [statistics.median(row[0][i] for row in rows) for i in range(STATES)]
            placed = "" if mode == "plain" else f"{statistics.median(row[1] for row in rows):.0f} of {STATES}"
            timings = " | ".join(f"{ms:.1f}" for ms in cells)
            print(f"| {condition[0]} | {mode} | {timings} | {placed} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chain", action="store_true", help="one run of 5 chained nodes instead of 5 runs")
    logging.basicConfig(level=logging.ERROR)
    # The slow set-up's proxy still forwards calls it held 2 s after the round's server is gone.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.chain))
