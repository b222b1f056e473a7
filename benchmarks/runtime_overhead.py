"""Runtime overhead of the instrumentation: no-op graph runs through the embedded state manager, without
and then with ExosphereInstrumentor, in one process; prints states per second for both and the ratio.

Run: ``.venv/bin/python benchmarks/runtime_overhead.py [--runs 300]`` (``make bench``). No assertions:
the numbers depend on the machine; the state manager and the HTTP polling are in the measured path,
as they are in production. Everything shares one event loop and one core (state manager, runtime,
triggers), so the ratio is an upper bound on the throughput cost: a runtime whose nodes do real work
pays the same absolute cost per state, a far smaller fraction.
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
from collections.abc import Sequence

from exospherehost import BaseNode, GraphNodeModel, StateManager, StoreConfigModel
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from pydantic import BaseModel

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from exo_otel.embedded import EmbeddedStateManager
from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from sm_fixtures import running_runtime

NAMESPACE = "exo-otel-bench"
GRAPH = "chain"


class StepOne(BaseNode):
    class Inputs(BaseModel):
        value: str

    class Outputs(BaseModel):
        value: str

    async def execute(self) -> BaseNode.Outputs:
        return self.Outputs(value=self.inputs.value)


class StepTwo(StepOne):
    pass


class StepThree(StepOne):
    pass


NODES: list[type[BaseNode]] = [StepOne, StepTwo, StepThree]


def chain() -> list[GraphNodeModel]:
    """one -> two -> three, each passing ``value`` on; the trigger's store gives it."""
    ids = ["one", "two", "three"]
    nodes = []
    for index, (cls, identifier) in enumerate(zip(NODES, ids, strict=True)):
        source = "${{ store.value }}" if index == 0 else f"${{{{ {ids[index - 1]}.outputs.value }}}}"
        nodes.append(GraphNodeModel(
            node_name=cls.__name__, namespace=NAMESPACE, identifier=identifier, inputs={"value": source},
            next_nodes=ids[index + 1:index + 2],
        ))
    return nodes


class CountingExporter(SpanExporter):
    """Drops spans after counting them: the cost measured is making spans, not shipping them."""

    def __init__(self) -> None:
        self.count = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.count += len(spans)
        return SpanExportResult.SUCCESS


async def workload(sm: EmbeddedStateManager, runs: int, workers: int) -> float:
    """Trigger ``runs`` runs of the chain at once; states per second until every run has finished."""
    client = StateManager(namespace=NAMESPACE, state_manager_uri=sm.uri, key=sm.api_key)
    async with running_runtime(sm, NAMESPACE, NODES, name="bench", workers=workers, batch_size=64):
        # Upsert once the nodes are registered (validation needs them); the same graph again is a no-op.
        await client.upsert_graph(GRAPH, chain(), {}, store_config=StoreConfigModel(required_keys=["value"]),
                                  polling_interval=0.05)
        start = time.perf_counter()
        semaphore = asyncio.Semaphore(16)

        async def trigger() -> str:
            async with semaphore:
                return str((await client.trigger(GRAPH, store={"value": uuid.uuid4().hex}))["run_id"])

        run_ids = await asyncio.gather(*(trigger() for _ in range(runs)))
        while any(sm.run_status(run_id) == "PENDING" for run_id in run_ids):
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - start
    states = sum(len(sm.states(run_id)) for run_id in run_ids)
    return states / elapsed


async def phase(runs: int, workers: int, rounds: int) -> list[float]:
    """Warm-up, then ``rounds`` measured rounds, on a state manager of its own (its store grows with
    every run and slows it down a little, so the two modes must not share one)."""
    async with EmbeddedStateManager(expose_run_context=True) as sm:
        await workload(sm, 10, workers)  # imports, connection pools, first-call paths
        return [await workload(sm, runs, workers) for _ in range(rounds)]


async def main(runs: int, workers: int, rounds: int) -> None:
    plain = await phase(runs, workers, rounds)

    exporter = CountingExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    instrumentor = ExosphereInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        traced = await phase(runs, workers, rounds)
    finally:
        instrumentor.uninstrument()
        provider.shutdown()

    best_plain, best_traced = max(plain), max(traced)
    print(f"workload: {rounds} rounds x {runs} runs of a 3-node no-op chain, {workers} workers, "
          f"poll interval 0.05 s, embedded state manager over HTTP on 127.0.0.1")
    print(f"uninstrumented: {best_plain:8.1f} states/s  (rounds: {', '.join(f'{x:.1f}' for x in plain)})")
    print(f"instrumented:   {best_traced:8.1f} states/s  (rounds: {', '.join(f'{x:.1f}' for x in traced)})")
    print(f"ratio instrumented/uninstrumented: best rounds {best_traced / best_plain:.3f}, "
          f"median rounds {statistics.median(traced) / statistics.median(plain):.3f}")
    print(f"spans exported while instrumented: {exporter.count}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    # The runtime logs every poll and state at INFO unless logging is configured; that would be most of
    # the CPU time measured in both modes.
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(args.runs, args.workers, args.rounds))
