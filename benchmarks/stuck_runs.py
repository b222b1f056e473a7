"""Stuck runs and the state manager side: a new run's spans, and the side's idle cost, at 10 to 10,000.

On one server with the side (the embedded one, or the real upstream one under the launcher on its
in-process database), runs that never settle are opened in steps (10, then 1,000, then 10,000 in
all); at each step a new three-node run is started beside them and timed from its trigger to its
root, its node spans and its outcome, and then the server is left idle for a while: the side's cost
over that time is printed per pass (embedded: the sweep's own time, its passes being synchronous
over the in-memory store) or per second (real server: the process's CPU from /proc, all of it, the
side's and upstream's own idle work). Both should stay flat. No assertions: the numbers are the result.

Run: ``.venv/bin/python benchmarks/stuck_runs.py [--server embedded|upstream] [--open 10 1000 10000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from exo_otel_demo.embedded import EmbeddedStateManager
from helpers.otlp_receiver import OtlpHttpReceiver, Span
from helpers.process_cpu import tree_cpu_seconds
from helpers.servers import EmbeddedServer, Server, UpstreamServerUnderTest
from helpers.stuck_runs import open_stuck_runs, time_a_new_run
from helpers.trace_checks import flatten
from helpers.upstream_side import side_server

IDLE_SECONDS = 30.0


@contextlib.asynccontextmanager
async def serving(kind: str, provider: TracerProvider, exporter: InMemorySpanExporter) -> AsyncIterator[
    tuple[Server, Callable[[], list[Span]], Callable[[], tuple[float, int]]]
]:
    """The server, every span collected, and its idle-cost counter (seconds used, passes or 0)."""
    if kind == "embedded":
        async with EmbeddedStateManager(server_side=True, tracer_provider=provider) as sm:
            assert sm._api.side is not None
            stats = sm._api.side.side.sweeper.stats
            yield (EmbeddedServer(sm), lambda: flatten(exporter.get_finished_spans()),
                   lambda: (stats.seconds, stats.passes))
        return
    with OtlpHttpReceiver() as rx, side_server(rx, history=False) as server:
        yield (UpstreamServerUnderTest(server), lambda: rx.spans() + flatten(exporter.get_finished_spans()),
               lambda: (tree_cpu_seconds(server.pid), 0))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=["embedded", "upstream"], default="embedded")
    parser.add_argument("--open", type=int, nargs="+", default=[10, 1000, 10000])
    args = parser.parse_args()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = ExosphereInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        async with serving(args.server, provider, exporter) as (server, spans, cost):
            alone = await time_a_new_run(server, spans)
            print(f"{args.server}: 0 open runs: new run's root {alone.root_s:.2f} s, node spans "
                  f"{alone.nodes_s:.2f} s, outcome {alone.outcome_s:.2f} s", flush=True)
            opened = 0
            first: float | None = None
            for total in args.open:
                started = time.monotonic()
                await open_stuck_runs(server, total - opened)
                opened = total
                opening_s = time.monotonic() - started
                exporter.clear()  # the stuck runs' roots: collected spans are searched while timing
                beside = await time_a_new_run(server, spans)
                exporter.clear()
                seconds_before, passes_before = cost()
                await asyncio.sleep(IDLE_SECONDS)
                seconds_after, passes_after = cost()
                used, passes = seconds_after - seconds_before, passes_after - passes_before
                per = used / passes * 1e3 if passes else used / IDLE_SECONDS * 1e3
                unit = f"ms per pass over {passes} passes" if passes else "ms CPU per second, whole server"
                first = first or per
                print(f"{args.server}: {total} stuck runs (opened in {opening_s:.0f} s): new run's root "
                      f"{beside.root_s:.2f} s, node spans {beside.nodes_s:.2f} s, outcome "
                      f"{beside.outcome_s:.2f} s; idle {IDLE_SECONDS:.0f} s: {per:.3f} {unit} "
                      f"(x{per / first:.2f} of the first)", flush=True)
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
