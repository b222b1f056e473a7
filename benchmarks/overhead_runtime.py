"""One benchmark round's runtime: a real exospherehost Runtime in a process of its own (runtime_overhead.py).

It registers its nodes, prints ``READY``, and on ``GO`` from standard input starts measuring its own CPU
time while it serves the chain's states; on ``STOP`` it flushes its telemetry (OTLP encoding and sending
included), stops measuring and prints one JSON line with the round's numbers. In an instrumented mode it
then measures the SDK floor in the same process, with the same providers: the spans and metric records
exo_otel made for one state, replayed without exo_otel, and prints a second JSON line.

Modes: ``plain`` (no exo_otel), ``spans`` (exo_otel, SDK tracer provider, no SDK meter provider) and
``metrics`` (exo_otel, SDK tracer and meter providers, default exemplar filter); ``sdk-spans`` and
``sdk-metrics`` use the same providers with no exo_otel: `minimal_tracing` makes the same SDK calls in
place (the in-place floor), and no replay follows.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Sequence

from exospherehost import BaseNode, Runtime
from opentelemetry import trace
from opentelemetry.context import Context, create_key, set_value
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from pydantic import BaseModel

import overhead_breakdown
from exo_otel.core import attributes as attr
from exo_otel.core.metrics import ExosphereMetrics
from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from minimal_tracing import MinimalTracingQueue

NAMESPACE = "exo-otel-bench"
GRAPH = "chain"  # runtime_overhead.py's
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(otelTraceID)s %(exosphere_run_id)s] %(message)s"
WORK_S = float(os.environ.get("EXO_OTEL_BENCH_WORK_MS", "0")) / 1000


def _work() -> None:
    """Busy the CPU for the configured time: a node that computes, not one that sleeps."""
    if WORK_S <= 0:
        return
    deadline = time.perf_counter() + WORK_S
    while time.perf_counter() < deadline:
        pass


class StepOne(BaseNode):
    class Inputs(BaseModel):
        value: str

    class Outputs(BaseModel):
        value: str

    async def execute(self) -> BaseNode.Outputs:
        _work()
        return self.Outputs(value=self.inputs.value)


class StepTwo(StepOne):
    pass


class StepThree(StepOne):
    pass


NODES: list[type[BaseNode]] = [StepOne, StepTwo, StepThree]


class RecordedSpans(SpanProcessor):
    """Keeps the node and execute spans exo_otel made for its first states: the floor replays exactly
    those, in turn (first nodes of a chain have no link, the others one: a run's mix)."""

    LIMIT = 30

    def __init__(self) -> None:
        self.nodes: dict[object, ReadableSpan] = {}
        self.executes: dict[object, ReadableSpan] = {}

    def on_end(self, span: ReadableSpan) -> None:
        # Paired by the node span's id: the execute span's parent (neither names the state otherwise).
        if span.name.startswith("node ") and span.context is not None:
            kept, key = self.nodes, span.context.span_id
        elif span.name.startswith("execute ") and span.parent is not None:
            kept, key = self.executes, span.parent.span_id
        else:
            return
        if len(kept) < self.LIMIT:
            kept.setdefault(key, span)

    def pairs(self) -> list[tuple[ReadableSpan, ReadableSpan]]:
        return [(node, self.executes[key]) for key, node in self.nodes.items() if key in self.executes]


def _configure_logging() -> None:
    """INFO, as a deployed runtime logs, with exo_otel's correlation fields in the format."""
    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the process
    defaults = {"otelTraceID": "-", "exosphere_run_id": "-"}
    handler.setFormatter(logging.Formatter(LOG_FORMAT, defaults=defaults))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def _cpu() -> float:
    return time.process_time()


def floor(
    tracer: trace.Tracer, metrics: ExosphereMetrics | None, recorded: RecordedSpans, count: int
) -> float:
    """CPU seconds per state for the SDK alone: the same two spans (names, kinds, attributes, links,
    events, status; the outcome set at the end) and the same metric records per state as exo_otel
    made, with no exo_otel code."""
    root = SpanContext(0x1234_5678_9ABC_DEF0_1234_5678_9ABC_DEF0, 0x1111_2222_3333_4444, is_remote=True,
                       trace_flags=TraceFlags(TraceFlags.SAMPLED))
    parent = trace.set_span_in_context(NonRecordingSpan(root))
    replays = []
    outcome_key = attr.STATE_OUTCOME  # known at the end only: set then, as exo_otel does
    for node, execute in recorded.pairs():
        node_attributes = {k: v for k, v in (node.attributes or {}).items() if k != outcome_key}
        execute_attributes = {k: v for k, v in (execute.attributes or {}).items() if k != outcome_key}
        # As exo_otel takes them: namespace and graph from the run (the spans do not carry them).
        metric_attributes = {attr.NAMESPACE: NAMESPACE, attr.GRAPH_NAME: GRAPH,
                             attr.NODE_NAME: node_attributes[attr.NODE_NAME]}
        replays.append((
            node.name, node_attributes, list(node.links), execute.name, execute_attributes,
            [(e.name, dict(e.attributes or {})) for e in execute.events],
            metric_attributes, {**metric_attributes, outcome_key: attr.OUTCOME_EXECUTED},
        ))
    if not replays:
        raise RuntimeError("no node and execute spans were recorded to replay")
    # exo_otel adds to the counter outside any span (no exemplar); an empty context would mean the current one
    no_span = set_value(create_key("no_exemplar"), True, Context())
    ok = Status(StatusCode.OK)
    start = _cpu()
    for index in range(count):
        (node_name, node_attributes, links, execute_name, execute_attributes, events, metric_attributes,
         outcome_attributes) = replays[index % len(replays)]
        node_span = tracer.start_span(node_name, context=parent, attributes=node_attributes, links=links)
        node_context = trace.set_span_in_context(node_span, parent)
        execute_span = tracer.start_span(execute_name, context=node_context, kind=SpanKind.CONSUMER,
                                         attributes=execute_attributes)
        current = trace.set_span_in_context(execute_span, node_context)
        if metrics is not None:
            metrics.queue_wait.record(0.01, metric_attributes, context=current)
        for name, event_attributes in events:
            execute_span.add_event(name, event_attributes)
        execute_span.set_attribute(outcome_key, attr.OUTCOME_EXECUTED)
        node_span.set_attribute(outcome_key, attr.OUTCOME_EXECUTED)
        execute_span.set_status(ok)
        if metrics is not None:
            metrics.node_duration.record(0.001, outcome_attributes, context=current)
            metrics.executions.add(1, outcome_attributes, context=no_span)
        execute_span.end()
        node_span.end()
    return start


async def serve(args: argparse.Namespace) -> None:
    breakdown = os.environ.get("EXO_OTEL_BENCH_BREAKDOWN") == "1"
    if breakdown:
        overhead_breakdown.install(with_exo_otel=args.mode in ("spans", "metrics"))
    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    recorded = RecordedSpans()
    instrumentor = ExosphereInstrumentor()
    minimal = args.mode.startswith("sdk-")
    if args.mode != "plain":
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(recorded)
        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(f"{args.sink}/v1/traces")))
        if args.mode.endswith("metrics"):
            reader = PeriodicExportingMetricReader(OTLPMetricExporter(f"{args.sink}/v1/metrics"),
                                                   export_interval_millis=1000)
            meter_provider = MeterProvider(metric_readers=[reader])
        if not minimal:
            instrumentor.instrument(tracer_provider=tracer_provider,
                                    meter_provider=meter_provider or NoOpMeterProvider())
    runtime = Runtime(namespace=NAMESPACE, name=f"bench-{args.mode}", nodes=NODES, state_manager_uri=args.uri,
                      key=args.key, workers=args.workers, batch_size=64, poll_interval=0.05)
    if minimal and tracer_provider is not None:
        metrics = ExosphereMetrics.create(meter_provider.get_meter("minimal")) if meter_provider else None
        runtime._state_queue = MinimalTracingQueue(runtime._state_queue.maxsize,
                                                   tracer_provider.get_tracer("minimal"), metrics,
                                                   NAMESPACE, f"bench-{args.mode}")
    await runtime._register()
    task = runtime.start()
    print("READY", flush=True)
    loop = asyncio.get_running_loop()
    await _expect(loop, "GO")
    if breakdown:
        overhead_breakdown.start()
    cpu_start, wall_start = _cpu(), time.perf_counter()
    await _expect(loop, "STOP")
    wall = time.perf_counter() - wall_start
    for provider in (tracer_provider, meter_provider):
        if provider is not None:
            provider.force_flush()
    cpu = _cpu() - cpu_start
    if breakdown:
        overhead_breakdown.report(args.mode, args.floor_states)
    print(json.dumps({"mode": args.mode, "cpu_s": cpu, "wall_s": wall}), flush=True)
    task.cancel()
    if tracer_provider is not None and not minimal:
        tracer = tracer_provider.get_tracer("exo_otel.benchmark.floor")
        metrics = ExosphereMetrics.create(meter_provider.get_meter("exo_otel.benchmark.floor")) \
            if meter_provider is not None else None
        start = floor(tracer, metrics, recorded, args.floor_states)
        for provider in (tracer_provider, meter_provider):
            if provider is not None:
                provider.force_flush()
        print(json.dumps({"floor_cpu_s": _cpu() - start, "floor_states": args.floor_states}), flush=True)
        instrumentor.uninstrument()
        tracer_provider.shutdown()
        if meter_provider is not None:
            meter_provider.shutdown()


async def _expect(loop: asyncio.AbstractEventLoop, word: str) -> None:
    line = await loop.run_in_executor(None, sys.stdin.readline)
    if line.strip() != word:
        raise SystemExit(f"expected {word!r} on stdin, got {line!r}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["plain", "spans", "metrics", "sdk-spans", "sdk-metrics"],
                        required=True)
    parser.add_argument("--uri", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--sink", required=True, help="base URL of the OTLP/HTTP sink")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--floor-states", type=int, default=2000)
    args = parser.parse_args(argv)
    _configure_logging()
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()

