"""What measuring each execution's CPU time costs the runtime, per execution, against exo_otel's whole
added cost (docs/trace-model.md, section "CPU time"; its default is on if this stays under 5%).

Run: ``.venv/bin/python benchmarks/cpu_time_cost.py``. No assertions: it prints numbers.

Measured in this process on the thread's CPU clock, in rounds that alternate "on" and "off" (the
median and spread over rounds are printed), for a node of 1, 3 and 10 steps (awaits) on a real event
loop: the node's coroutine awaited bare, and through `Metered` (the clock read around each step);
plus what each attempt adds once: the meter, its figure, the span attribute on a real SDK span, the
histogram record on a real SDK histogram, the report header set and read back. Beside it, the same
run's price of one execution's spans and metrics with the SDK alone (the "SDK floor" the overhead
benchmarks use), for scale: exo_otel's added CPU per execution is 1.5x to 3x that floor.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable, Coroutine
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from exo_otel.core import attributes as attr
from exo_otel.core.cpu_report import CPU_TIME_HEADER, cpu_time_header, read_cpu_time_header
from exo_otel.sdk.cpu_time import CpuMeter, Metered
from exo_otel.sdk.request_headers import add_headers, stop_adding


class _Drop(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def node(steps: int) -> Coroutine[Any, Any, int]:
    async def run() -> int:
        for _ in range(steps):
            await asyncio.sleep(0)
        return steps

    return run()


async def executions(count: int, steps: int, metered: bool) -> float:
    """CPU seconds of ``count`` node executions awaited one after another on this loop."""
    started = time.thread_time()
    for _ in range(count):
        if metered:
            await Metered(node(steps), CpuMeter())
        else:
            await node(steps)
    return time.thread_time() - started


def per_attempt(count: int, on: bool, tracer: Any, histogram: Any) -> float:
    """CPU seconds of ``count`` attempts' span and metric work, with or without the CPU-time parts."""
    metric_attributes = {attr.NAMESPACE: "n", attr.GRAPH_NAME: "g", attr.NODE_NAME: "Node",
                         attr.STATE_OUTCOME: attr.OUTCOME_EXECUTED}
    started = time.thread_time()
    for _ in range(count):
        span = tracer.start_span("execute Node")
        if on:
            meter = CpuMeter()
            meter.loop_ns = 123_456
            seconds = meter.seconds
            token = add_headers({CPU_TIME_HEADER: cpu_time_header(seconds)})
            stop_adding(token)
            read_cpu_time_header(cpu_time_header(seconds))  # the state manager side's read
            span.set_attribute(attr.EXECUTION_CPU_TIME, seconds)
            histogram.record(seconds, metric_attributes)
        span.end()
    return time.thread_time() - started


def rounds(measure: Callable[[bool], float], count: int, how_many: int) -> tuple[list[float], list[float]]:
    """Per-execution CPU seconds with the parts on and off, rounds alternating (which goes first too)."""
    on, off = [], []
    for index in range(how_many + 1):
        order = (True, False) if index % 2 else (False, True)
        results = {flag: measure(flag) / count for flag in order}
        if index:  # round 0 warms up
            on.append(results[True])
            off.append(results[False])
    return on, off


def spread(values: list[float]) -> str:
    us = [v * 1e6 for v in values]
    return f"{statistics.median(us):7.2f} us (rounds {min(us):.2f} to {max(us):.2f})"


def main(args: argparse.Namespace) -> None:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(_Drop()))
    tracer = tracer_provider.get_tracer("bench")
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    histogram = meter_provider.get_meter("bench").create_histogram("bench.cpu_time", unit="s")
    loop = asyncio.new_event_loop()
    print(f"{args.rounds} rounds of {args.executions} executions each, on and off alternating")
    try:
        for steps in (1, 3, 10):
            on, off = rounds(lambda flag, s=steps: loop.run_until_complete(  # type: ignore[misc]
                executions(args.executions, s, flag)), args.executions, args.rounds)
            added = [a - b for a, b in zip(on, off, strict=True)]
            print(f"node of {steps:2} steps: bare {spread(off)}, metered {spread(on)}, "
                  f"metering adds {spread(added)} per execution")
        on, off = rounds(lambda flag: per_attempt(args.executions, flag, tracer, histogram),
                         args.executions, args.rounds)
        added = [a - b for a, b in zip(on, off, strict=True)]
        print(f"per attempt: a span alone {spread(off)}; meter, attribute, histogram record and "
              f"header add {spread(added)}")
    finally:
        loop.close()
        tracer_provider.shutdown()
        meter_provider.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executions", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    main(parser.parse_args())
