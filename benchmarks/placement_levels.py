"""Run-API placement at 1, 10, 50 and 200 runs in flight: states placed, reference integrity, calls per state.

One instrumented runtime (``placement="run_api"``: the enqueue answer carries no run context)
runs N concurrent runs of the 11-state test graph (tests/helpers/upstream_graph.py) against the embedded
state manager, or against the real upstream one with ``--upstream`` (needs UPSTREAM_GIT_DIR, see
tests/helpers/upstream_sm.py). Prints one line per level; no assertions.

Run: ``.venv/bin/python benchmarks/placement_levels.py [--levels 1 10 50 200] [--budget 20] [--upstream]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from exo_otel_demo.embedded import EmbeddedStateManager
from helpers.placement_load import run_load
from helpers.upstream_sm import upstream_state_manager


@contextlib.asynccontextmanager
async def server(upstream: bool) -> AsyncIterator[tuple[str, str]]:
    if upstream:
        with upstream_state_manager(history=False) as sm:
            yield sm.uri, sm.api_key
    else:
        async with EmbeddedStateManager() as embedded:
            yield embedded.uri, embedded.api_key


async def main(levels: list[int], budget: float | None, wait_ms: int | None, upstream: bool,
               workers: int, poll_interval: float) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = ExosphereInstrumentor()
    instrumentor.instrument(tracer_provider=provider, placement="run_api", run_api_budget=budget,
                            placement_wait_ms=wait_ms)
    label = "upstream" if upstream else "embedded"
    settings = instrumentor._telemetry.settings
    print(f"{label} state manager, run APIs only; budget {settings.run_api_budget} calls/s, "
          f"placement wait {settings.placement_wait_ms} ms, {workers} workers, "
          f"poll interval {poll_interval} s")
    try:
        async with server(upstream) as (uri, key):
            for runs in levels:
                result = await run_load(
                    uri, key, runs, exporter, workers=workers, poll_interval=poll_interval
                )
                print(result.line(f"{label}: "), flush=True)
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 10, 50, 200])
    parser.add_argument("--budget", type=float, default=None, help="run API calls per second")
    parser.add_argument("--wait-ms", type=int, default=None, help="placement wait bound of a worker")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--poll-interval", type=float, default=0.05)
    parser.add_argument("--upstream", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("exospherehost").setLevel(logging.CRITICAL)
    asyncio.run(main(args.levels, args.budget, args.wait_ms, args.upstream, args.workers, args.poll_interval))
