"""Stuck runs and the state manager side: a new run's spans, and the side's idle cost, at 10 to 10,000.

On one server with the side (the embedded one, or the real upstream one under the launcher on its
in-process database), runs that never settle are opened in steps (10, then 1,000, then 10,000 in
all); at each step a new three-node run is started beside them and timed from its trigger to its
root, its node spans and its outcome, and then the server is left idle for a while: the side's cost
over that time is printed per pass (embedded: the sweep's own time, its passes being synchronous
over the in-memory store) or per second (real server: the process's CPU from /proc, all of it, the
side's and upstream's own idle work). Both should stay flat. No assertions: the numbers are the result.

``--side off`` (real server only) runs the same server without the side, opening the same stuck runs
and measuring the same idle CPU (there is no new run to time: its spans would come from the side), so
the side's share of the idle cost is the difference between the two at each count. The real server
runs on upstream's in-process database (a full-scan imitation of MongoDB: every query reads every
document) unless ``EXO_OTEL_UPSTREAM_DB=secantus`` puts it on SecantusDB (its own process, real
indexes).

Run: ``.venv/bin/python benchmarks/stuck_runs.py [--server embedded|upstream] [--side on|off]
[--open 10 1000 10000] [--idle 30]``.
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
from helpers.upstream_side import SIDE_PIP, side_server
from helpers.upstream_sm import upstream_state_manager


@contextlib.asynccontextmanager
async def serving(
    kind: str, side: bool, provider: TracerProvider, exporter: InMemorySpanExporter
) -> AsyncIterator[
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
    if not side:  # the same server and venv, nothing preloaded
        with upstream_state_manager(pip=SIDE_PIP, history=False) as plain:
            yield UpstreamServerUnderTest(plain), list, lambda: (tree_cpu_seconds(plain.pid), 0)
        return
    with OtlpHttpReceiver() as rx, side_server(rx, history=False) as server:
        yield (UpstreamServerUnderTest(server), lambda: rx.spans() + flatten(exporter.get_finished_spans()),
               lambda: (tree_cpu_seconds(server.pid), 0))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=["embedded", "upstream"], default="embedded")
    parser.add_argument("--side", choices=["on", "off"], default="on", help="off: the real server only")
    parser.add_argument("--open", type=int, nargs="+", default=[10, 1000, 10000])
    parser.add_argument("--idle", type=float, default=30.0, help="seconds idle per step (CPU measured)")
    args = parser.parse_args()
    side = args.side == "on"
    if not side and args.server != "upstream":
        parser.error("--side off needs --server upstream")
    label = f"{args.server} side {args.side}"
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = ExosphereInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        async with serving(args.server, side, provider, exporter) as (server, spans, cost):
            if side:
                alone = await time_a_new_run(server, spans)
                print(f"{label}: 0 open runs: new run's root {alone.root_s:.2f} s, node spans "
                      f"{alone.nodes_s:.2f} s, outcome {alone.outcome_s:.2f} s", flush=True)
            opened = 0
            first: float | None = None
            for total in args.open:
                started = time.monotonic()
                await open_stuck_runs(server, total - opened)
                opened = total
                opening_s = time.monotonic() - started
                exporter.clear()  # the stuck runs' roots: collected spans are searched while timing
                timed = ""
                if side:
                    beside = await time_a_new_run(server, spans)
                    timed = (f": new run's root {beside.root_s:.2f} s, node spans {beside.nodes_s:.2f} s, "
                             f"outcome {beside.outcome_s:.2f} s")
                exporter.clear()
                seconds_before, passes_before = cost()
                await asyncio.sleep(args.idle)
                seconds_after, passes_after = cost()
                used, passes = seconds_after - seconds_before, passes_after - passes_before
                per = used / passes * 1e3 if passes else used / args.idle * 1e3
                unit = f"ms per pass over {passes} passes" if passes else "ms CPU per second, whole server"
                first = first or per
                print(f"{label}: {total} stuck runs (opened in {opening_s:.0f} s){timed}; idle "
                      f"{args.idle:.0f} s: {per:.3f} {unit} (x{per / first:.2f} of the first)", flush=True)
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
