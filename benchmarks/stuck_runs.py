"""Stuck runs and the state manager side: a new run's spans, and the side's idle cost, at 10 to 10,000.

On one server with the side (the embedded one, or the real upstream one under the launcher on its
in-process database), runs that never settle are opened in steps (10, then 1,000, then 10,000 in
all); at each step a new three-node run is started beside them and timed from its trigger to its
root, its node spans and its outcome, then the server is left idle for a while, and a new run is
timed again (the first one comes while the sweep still works through the opening's burst of
triggers, each of which touched its run; the second with only the stuck runs open). The side's cost
over that time is printed per pass (embedded: the sweep's own time, its passes being synchronous
over the in-memory store) or per second (real server: the process's CPU from /proc, all of it, the
side's and upstream's own idle work). Both should stay flat. No assertions: the numbers are the result.

Every new run is also timed to the server's runs API answering it settled, which needs no side:
``--side off`` (real server only) runs the same server without the side, opening the same stuck runs,
timing the new runs that way and measuring the same idle CPU, so the side's share of the idle cost is
the difference between the two at each count. The real server runs on upstream's in-process database
(a full-scan imitation of MongoDB: every query reads every document) unless
``EXO_OTEL_UPSTREAM_DB=secantus`` puts it on SecantusDB (its own process, real indexes); then the
database process's idle CPU is printed too (what the side's background check asks of it shows there,
not in the server's CPU).

Run: ``.venv/bin/python benchmarks/stuck_runs.py [--server embedded|upstream] [--side on|off]
[--open 10 1000 10000] [--idle 30]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from exo_otel_demo.embedded import EmbeddedStateManager
from helpers.otlp_receiver import OtlpHttpReceiver, Span
from helpers.process_cpu import tree_cpu_seconds
from helpers.servers import EmbeddedServer, Server, UpstreamServerUnderTest
from helpers.stuck_runs import NewRun, open_stuck_runs, time_a_new_run
from helpers.trace_checks import flatten
from helpers.upstream_harness import Settings, in_process_server, secantus_database
from helpers.upstream_side import AUTO_INIT, SIDE_PIP, otel_env
from helpers.upstream_sm import DATABASE, require_upstream


@dataclass
class Counters:
    """What the benchmark reads of a server: its CPU seconds (and sweep passes, embedded), and its
    database's CPU seconds where the database is a process of its own (SecantusDB), else None."""

    server: Callable[[], tuple[float, int]]
    database: Callable[[], float] | None = None
    check_pages: Callable[[], tuple[float, int, int]] | None = None
    """Embedded: the time of the sweep's passes that read a background-check page, the pages, their runs."""


@contextlib.asynccontextmanager
async def serving(
    kind: str, side: bool, provider: TracerProvider, exporter: InMemorySpanExporter
) -> AsyncIterator[tuple[Server, Callable[[], list[Span]] | None, Counters]]:
    """The server, every span collected (None without the side), and its cost counters."""
    if kind == "embedded":
        async with EmbeddedStateManager(server_side=True, tracer_provider=provider) as sm:
            assert sm._api.side is not None
            stats = sm._api.side.side.sweeper.stats
            yield (EmbeddedServer(sm), lambda: flatten(exporter.get_finished_spans()),
                   Counters(lambda: (stats.seconds, stats.passes),
                            check_pages=lambda: (stats.check_seconds, stats.check_pages, stats.check_runs)))
        return
    require_upstream()
    with contextlib.ExitStack() as stack:
        settings, database = Settings(), None
        if DATABASE == "secantus":
            database = stack.enter_context(secantus_database())
            settings = Settings(mongo_uri=database.uri)
        rx = stack.enter_context(OtlpHttpReceiver())
        # With the side: under the launcher's auto-initialisation, exporting to rx; without it the same
        # server and venv, nothing preloaded.
        server = stack.enter_context(in_process_server(
            pip=tuple(SIDE_PIP.split()), preload=(AUTO_INIT,) if side else (), history=False,
            settings=settings, **(otel_env(rx) if side else {}),
        ))
        database_cpu = None
        if database is not None:
            database_pid = database.process.pid
            database_cpu = lambda: tree_cpu_seconds(database_pid)  # noqa: E731
        collected = (lambda: rx.spans() + flatten(exporter.get_finished_spans())) if side else None
        yield (UpstreamServerUnderTest(server), collected,
               Counters(lambda: (tree_cpu_seconds(server.pid), 0), database_cpu))


def new_run_line(run: NewRun) -> str:
    spans = ""
    if not math.isnan(run.root_s):
        spans = f"root {run.root_s:.2f} s, node spans {run.nodes_s:.2f} s, outcome {run.outcome_s:.2f} s, "
    return f"new run's {spans}settled (runs API) {run.settled_s:.2f} s"


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
    label = f"{args.server}{'' if args.server == 'embedded' else ' on ' + DATABASE} side {args.side}"
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = ExosphereInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        async with serving(args.server, side, provider, exporter) as (server, spans, counters):
            alone = await time_a_new_run(server, spans)
            print(f"{label}: 0 open runs: {new_run_line(alone)}", flush=True)
            opened = 0
            first: float | None = None
            for total in args.open:
                started = time.monotonic()
                await open_stuck_runs(server, total - opened)
                opened = total
                opening_s = time.monotonic() - started
                exporter.clear()  # the stuck runs' roots: collected spans are searched while timing
                # Right after the opening: the sweep may still be working through its touches.
                beside = await time_a_new_run(server, spans)
                exporter.clear()
                seconds_before, passes_before = counters.server()
                database_before = counters.database() if counters.database is not None else 0.0
                pages_before = counters.check_pages() if counters.check_pages is not None else None
                await asyncio.sleep(args.idle)
                seconds_after, passes_after = counters.server()
                used, passes = seconds_after - seconds_before, passes_after - passes_before
                per_second = used / args.idle * 1e3
                per = used / passes * 1e3 if passes else per_second
                if passes:
                    unit = f"ms per pass over {passes} passes ({per_second:.3f} ms per second)"
                if pages_before is not None and counters.check_pages is not None:
                    now_pages = counters.check_pages()
                    page_s, pages, page_runs = (
                        now_pages[0] - pages_before[0], now_pages[1] - pages_before[1],
                        now_pages[2] - pages_before[2])
                    if pages:
                        unit += (f"; a pass with a background-check page {page_s / pages * 1e3:.3f} ms "
                                 f"({pages} pages, {page_runs / pages:.1f} runs a page)")
                else:
                    unit = "ms CPU per second, whole server"
                first = first or per
                on_database = ""
                if counters.database is not None:
                    database_ms = (counters.database() - database_before) / args.idle * 1e3
                    on_database = f"; the database process {database_ms:.2f} ms CPU per second"
                print(f"{label}: {total} stuck runs (opened in {opening_s:.0f} s): {new_run_line(beside)}; "
                      f"idle {args.idle:.0f} s: {per:.3f} {unit} (x{per / first:.2f} of the first)"
                      f"{on_database}", flush=True)
                # Again, the opening's touches long swept: only the stuck runs are open.
                again = await time_a_new_run(server, spans)
                exporter.clear()
                print(f"{label}: {total} stuck runs, after the idle time: {new_run_line(again)}", flush=True)
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
