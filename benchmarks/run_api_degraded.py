"""Runtime throughput when the run APIs answer slowly or hang, against the same run with healthy run APIs.

One instrumented runtime (``placement="run_api"``) runs N concurrent runs of the
11-state test graph (tests/helpers/upstream_graph.py) against the embedded state manager, through a
loopback proxy that passes the run API calls (healthy), delays each by 1.9 s (slow), or never answers them
(hanging: the run API placement's 2 s timeout ends them). An uninstrumented round is the reference. For
each mode it prints states per second, the ratio to the healthy round, whether every state executed
exactly once (the re-enqueued state twice, by design), and the placement and reference-integrity counts.

Run: ``.venv/bin/python benchmarks/run_api_degraded.py [--runs 30] [--rounds 2]``. No assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from exo_otel_demo.embedded import EmbeddedStateManager
from helpers.http_proxy import RunApiMode
from helpers.placement_load import LoadResult, run_load

MODES: list[tuple[str, RunApiMode, float]] = [("healthy", "pass", 0.0), ("slow 1.9 s", "slow", 1.9),
                                              ("hanging", "timeout", 60.0)]


async def one_round(runs: int, exporter: InMemorySpanExporter, mode: RunApiMode, hang_s: float) -> LoadResult:
    # A state manager per round: its store grows with every run and would slow later rounds.
    async with EmbeddedStateManager() as sm:
        return await run_load(sm.uri, sm.api_key, runs, exporter, run_api=mode, hang_s=hang_s)


async def main(runs: int, rounds: int) -> None:
    exporter = InMemorySpanExporter()
    plain = [await one_round(runs, exporter, "pass", 0.0) for _ in range(rounds)]
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = ExosphereInstrumentor()
    instrumentor.instrument(tracer_provider=provider, placement="run_api")
    results: dict[str, list[LoadResult]] = {}
    try:
        for _ in range(rounds):  # interleaved, so drift in the machine's load hits every mode alike
            for label, mode, hang_s in MODES:
                results.setdefault(label, []).append(await one_round(runs, exporter, mode, hang_s))
    finally:
        instrumentor.uninstrument()
        provider.shutdown()

    def rate(result: LoadResult) -> float:
        return result.states / result.seconds

    healthy = statistics.median(rate(r) for r in results["healthy"])
    uninstrumented = statistics.median(rate(r) for r in plain)
    print(f"workload: {rounds} rounds x {runs} runs of the 11-state placement graph at once, 8 workers, "
          f"poll interval 0.05 s, embedded state manager on 127.0.0.1, run APIs through a proxy")
    print(f"uninstrumented:      {uninstrumented:7.1f} states/s (median of {rounds})")
    for label, _, _ in MODES:
        rounds_of = results[label]
        median = statistics.median(rate(r) for r in rounds_of)
        once = all(r.executions == r.expected_executions and r.states_executed_twice == r.runs
                   for r in rounds_of)
        last = rounds_of[-1]
        print(f"{label:<12} {median:7.1f} states/s  ratio to healthy {median / healthy:.3f}  "
              f"to uninstrumented {median / uninstrumented:.3f}  every state executed once: {once}")
        print(f"    last round: {last.line()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    for noisy in ("exospherehost", "aiohttp.server", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    asyncio.run(main(args.runs, args.rounds))
