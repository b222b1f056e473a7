"""exo_otel's cost per node execution in instructions counted under callgrind: exact on a loaded machine.

Run: ``.venv/bin/python benchmarks/exact_cost.py`` (``make bench-exact``; needs Valgrind, x86-64 Linux). No
assertions: it prints numbers. ``--runs 2`` (the default) measures everything twice and prints both and
their difference; ``--no-profile`` skips the breakdown by function.

What is measured, in process (no network, no server, no timer in the measured part): a real exospherehost
``Runtime``, its real worker loop (``Runtime._worker``) serving the states of recorded-shape enqueue answers,
from the poll answer to the report. Only what would leave the process is replaced, the same way in every
part: ``Runtime._enqueue_call`` hands over the next prepared answer and ``Runtime._notify_executed``
builds its body; both go through ``aiohttp.ClientSession._request``, which sends nothing. So with
exo_otel, its wrappers run where they run in production (the poll, the worker queue, the node's
coroutine, the report, the report's request headers, the log record factory). The workload: chains of 3
nodes (``one -> two -> three``, no-op nodes), 16 runs at a time: a poll brings the 16 first states, the
next poll their 16 successors, and so on. Every state is of a new run or of a run whose earlier states
were executed here. Logging is at INFO, formatted with exo_otel's correlation fields (defaults where a
record has none), to a stream that drops the text. Two kinds of enqueue answer
(docs/trace-model.md, section "The carrier"):

- ``embedded``: the run context without the carrier (``run_id``, ``graph_name``, ``parents``: the embedded
  state manager's ``expose_run_context``); the runtime derives the run's trace from the run id and makes
  both spans of a state (node and execute);
- ``side``: the state manager side's fields (those plus ``retry_count`` and the carrier's
  ``traceparent``, ``node_spans: server``), made by ``exo_otel.server.context.enqueue_extension``; the
  server emits the node spans, so the runtime makes the execute span only.

The parts, each in a process of its own (same set-up otherwise):

- ``plain``: no instrumentation at all (the baseline: the runtime's own loop, logging and stand-ins);
- ``floor``: the SDK floor. No exo_otel code runs; the worker queue makes, with the OpenTelemetry API,
  the same spans (names, kinds, attribute keys, links, status, start and end times) and, with metrics,
  the same metric records per state (queue wait and duration histograms and, when exo_otel measures CPU
  time, the CPU time histogram, with the execute span current; the executions counter with no span) and
  per poll (the poll duration), the execute span's context attached while the node runs. Everything
  exo_otel derives (run roots, upstream span ids, timestamps, placement) is given to it ready-made at
  set-up, and it sets no baggage and no log fields: what exo_otel does beyond it is exo_otel's own cost;
- ``exo``: exo_otel (``ExosphereInstrumentor().instrument()``, default settings), log correlation on.

Each with ``spans`` (an SDK tracer provider, SimpleSpanProcessor, an exporter that only counts; for
exo_otel a no-op meter provider) or ``metrics`` (the same plus an SDK meter provider with an in-memory
reader, default exemplar filter, never collected in the measured part).

How it counts: in each process, after set-up (run by Valgrind uninstrumented, ``--instr-atstart=no``,
until a client request starts callgrind's instrumentation: faster) and a warm-up (one group of 48
executions per kind), a window of 0 executions and a window of N (default 96) for each kind. A window is
the measured call, fenced by callgrind client requests (collection on, off, dump; made by a few bytes of
machine code through ctypes), after ``gc.collect(); gc.freeze()`` so that every window starts from the
same collector state. Instructions per execution = (Ir(N) - Ir(0)) / N: what a window costs whatever its
size cancels. PYTHONHASHSEED is fixed and the OTEL_* variables are cleared. What still varies between
runs (timestamps and the histogram buckets they fall in, exemplar sampling, random span ids) moves the
counts by well under 1%.

The profile pass runs ``exo``, ``floor`` and ``plain`` with metrics again under ``python -X perf``
(every Python function called through a trampoline, which the perf map names) with callgrind's
``--fn-skip`` on every C function, so each instruction is charged to the Python function executing it:
exo_otel's code, the OpenTelemetry SDK's, the runtime's. Calls cost more under ``-X perf`` (no inlined
Python-to-Python calls), so the profile's totals are higher than the exact counts: compare its parts
with each other.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import ctypes
import gc
import json
import logging
import mmap
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
NAMESPACE = "exo-otel-exact"
GRAPH = "chain"
RUNTIME_NAME = "exact"
BATCH = 16
"""States per poll answer (and runs per group)."""
STEPS = (("StepOne", "one"), ("StepTwo", "two"), ("StepThree", "three"))
GROUP = BATCH * len(STEPS)
"""Executions per group of runs: windows hold whole groups."""
KINDS = ("embedded", "side")
KIND_LABELS = {"embedded": "no carrier (embedded)", "side": "carrier (state manager side)"}
PARTS = (("plain", "spans"), ("floor", "spans"), ("floor", "metrics"), ("exo", "spans"), ("exo", "metrics"))
PROFILED = (("exo", "metrics"), ("floor", "metrics"), ("plain", "spans"))
SEED = 20261203
HASH_SEED = "0"
LOG_FORMAT = ("%(asctime)s %(levelname)s %(name)s [%(otelTraceID)s %(otelSpanID)s %(exosphere_run_id)s] "
              "%(message)s")
LOG_DEFAULTS = {"otelTraceID": "-", "otelSpanID": "-", "exosphere_run_id": "-"}
CALLGRIND_ENV = "EXO_OTEL_EXACT_CALLGRIND"
CPU_TIME_ENV = "EXO_OTEL_EXACT_CPU_TIME"  # "1": exo_otel with cpu_time=True, and the floor likewise
FLOOR_PARENTS_ENV = "EXO_OTEL_EXACT_FLOOR_PARENTS"  # "1": the floor makes its parents' SDK objects itself


def _cpu_time_on() -> bool:
    return os.environ.get(CPU_TIME_ENV) == "1"


def _floor_makes_parents() -> bool:
    return os.environ.get(FLOOR_PARENTS_ENV) == "1"


# --- callgrind client requests ------------------------------------------------------------------------

class Callgrind:
    """Callgrind's client requests (valgrind/callgrind.h), made from Python: ``toggle`` collection and
    ``dump`` the counts so far under a label. Outside callgrind they do nothing."""

    _TOOL_BASE = (ord("C") << 24) | (ord("T") << 16)
    _TOGGLE_COLLECT = _TOOL_BASE + 2
    _DUMP_STATS_AT = _TOOL_BASE + 3
    _START_INSTRUMENTATION = _TOOL_BASE + 4
    # x86-64: rax = the request block, rdx = 0 (the answer outside Valgrind), the special preamble (four
    # rotations of rdi that add up to none), xchg rbx,rbx (the request), return rdx.
    _CODE = bytes.fromhex("4889f8" "31d2" "48c1c703" "48c1c70d" "48c1c73d" "48c1c733" "4887db" "4889d0" "c3")

    def __init__(self, active: bool) -> None:
        self._request: Callable[[Any], int] | None = None
        if not active:
            return
        if platform.machine() != "x86_64":
            raise SystemExit("the callgrind client requests are written for x86-64")
        self._page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        self._page.write(self._CODE)
        address = ctypes.addressof(ctypes.c_char.from_buffer(self._page))
        self._request = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_void_p)(address)
        self._block = (ctypes.c_ulong * 6)()

    def _call(self, request: int, argument: int = 0) -> None:
        if self._request is None:
            return
        self._block[0], self._block[1] = request, argument
        self._request(self._block)

    def start(self) -> None:
        """Instrument from now on (the imports and the set-up ran uninstrumented: faster)."""
        self._call(self._START_INSTRUMENTATION)

    def toggle(self) -> None:
        self._call(self._TOGGLE_COLLECT)

    def dump(self, label: str) -> None:
        text = ctypes.create_string_buffer(label.encode())
        self._call(self._DUMP_STATS_AT, ctypes.addressof(text))


# --- the workload ----------------------------------------------------------------------------------------

def _nodes() -> list[type[Any]]:
    from exospherehost import BaseNode
    from pydantic import BaseModel

    class StepOne(BaseNode):  # type: ignore[misc]
        class Inputs(BaseModel):
            value: str

        class Outputs(BaseModel):
            value: str

        async def execute(self) -> Any:
            return self.Outputs(value=self.inputs.value)

    class StepTwo(StepOne):
        pass

    class StepThree(StepOne):
        pass

    return [StepOne, StepTwo, StepThree]


@dataclass(frozen=True, slots=True)
class FloorPlan:
    """What the SDK floor is handed for one state: all that exo_otel would derive, made at set-up."""

    parent: Any
    """The node span's parent context (the run root); with ``server_node``, the execute span's."""
    server_node: bool
    links: list[Any]
    created_ns: int
    metric_attributes: dict[str, str]
    outcome_attributes: dict[str, str]
    # With --floor-parents, what it makes ``parent`` and ``links`` from in the measured part (the ids
    # are still given): the run, its carrier (side), the trace id, the span id of the server's node span
    # (side) or of the run root (embedded), the upstream state's node span id (embedded; 0: none).
    run_id: str = ""
    carrier: dict[str, str] | None = None
    trace_id: int = 0
    span_id: int = 0
    upstream_span_id: int = 0


@dataclass
class Prepared:
    """One window's enqueue answers (prepared outside the measured part)."""

    kind: str
    answers: list[dict[str, Any]]
    executions: int


class _Sink:
    """The log stream: drops the text (``keep`` keeps it, for the check)."""

    def __init__(self, keep: bool) -> None:
        self.lines: list[str] | None = [] if keep else None

    def write(self, text: str) -> int:
        if self.lines is not None:
            self.lines.append(text)
        return len(text)

    def flush(self) -> None:
        return


class CountingExporter:
    """A span exporter that counts (``keep`` keeps the spans, for the check): the SDK's processing path,
    no encoding."""

    def __init__(self, keep: bool) -> None:
        self.count = 0
        self.spans: list[Any] | None = [] if keep else None

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        self.count += len(spans)
        if self.spans is not None:
            self.spans.extend(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


_floor_current: contextvars.ContextVar[tuple[Any, ...] | None] = contextvars.ContextVar(
    "exact_cost_floor", default=None
)


def _floor_queue_class() -> type[Any]:
    from opentelemetry import context, propagate, trace
    from opentelemetry.sdk.trace.sampling import Decision
    from opentelemetry.trace import (
        Link,
        NonRecordingSpan,
        SpanContext,
        SpanKind,
        Status,
        StatusCode,
        TraceFlags,
    )

    from exo_otel.core import attributes as attr

    ok = Status(StatusCode.OK)
    makes_parents = _floor_makes_parents()
    sampled_flags = TraceFlags(TraceFlags.SAMPLED)
    # Not empty: the SDK takes an empty context for "none given" and uses the current one.
    no_span = context.set_value(context.create_key("exact_cost.no_exemplar"), True, context.Context())
    messaging = attr.execute_messaging()
    # With CPU time off (--no-cpu-time) exo_otel makes neither the attribute nor the histogram record.
    cpu_key = getattr(attr, "EXECUTION_CPU_TIME", None) if _cpu_time_on() else None

    class FloorQueue(asyncio.Queue[Any]):
        """A worker queue making, with the OpenTelemetry API alone, the spans and records exo_otel makes."""

        def __init__(self, maxsize: int, tracer: Any, metrics: Any, plans: dict[str, FloorPlan],
                     sampler: Any = None) -> None:
            super().__init__(maxsize)
            self.tracer, self.metrics, self.plans, self.sampler = tracer, metrics, plans, sampler
            self.roots: dict[str, Any] = {}

        def _parents(self, plan: FloorPlan) -> tuple[Any, list[Any]]:
            """The SDK calls exo_otel makes for a state's parent and links: once per run the run root's
            context (the carrier extracted through the configured propagators, or the sampler asked and
            the root's span context made), per state the node span's or the upstream link's."""
            root = self.roots.get(plan.run_id)
            if root is None:
                if plan.carrier is not None:
                    root = propagate.extract(plan.carrier, context=context.Context())
                else:
                    decision = self.sampler.should_sample(
                        context.Context(), plan.trace_id, f"trigger {GRAPH}", SpanKind.PRODUCER).decision
                    flags = sampled_flags if decision is Decision.RECORD_AND_SAMPLE else TraceFlags(0)
                    root_span = NonRecordingSpan(SpanContext(plan.trace_id, plan.span_id, is_remote=True,
                                                             trace_flags=flags))
                    root = trace.set_span_in_context(root_span, context.Context())
                self.roots[plan.run_id] = root
                if len(self.roots) > 4096:
                    del self.roots[next(iter(self.roots))]
            if plan.server_node:
                node = SpanContext(plan.trace_id, plan.span_id, is_remote=True, trace_flags=sampled_flags)
                return trace.set_span_in_context(NonRecordingSpan(node), root), []
            if not plan.upstream_span_id:
                return root, []
            upstream = SpanContext(plan.trace_id, plan.upstream_span_id, is_remote=True,
                                   trace_flags=sampled_flags)
            return root, [Link(upstream)]

        async def get(self) -> Any:
            state = await super().get()
            plan = self.plans[state["state_id"]]
            now = time.time_ns()
            parent, links = self._parents(plan) if makes_parents else (plan.parent, plan.links)
            if plan.server_node:
                node = None
                execute_parent = parent
            else:
                node = self.tracer.start_span(
                    f"node {state['identifier']}", context=parent, links=links,
                    attributes={attr.STATE_ID: state["state_id"], attr.NODE_NAME: state["node_name"]},
                    start_time=plan.created_ns)
                execute_parent = trace.set_span_in_context(node, plan.parent)
            wait_ns = now - plan.created_ns
            execute = self.tracer.start_span(
                f"execute {state['node_name']}", context=execute_parent, kind=SpanKind.CONSUMER,
                attributes={attr.STATE_QUEUE_WAIT_MS: wait_ns / 1e6, **messaging}, start_time=now)
            current = trace.set_span_in_context(execute, execute_parent)
            if self.metrics is not None:
                self.metrics.queue_wait.record(wait_ns / 1e9, plan.metric_attributes, context=current)
            _floor_current.set((node, execute, context.attach(current), plan, now))
            return state

        def task_done(self) -> None:
            held = _floor_current.get()
            if held is not None:
                _floor_current.set(None)
                node, execute, token, plan, started = held
                end = time.time_ns()
                if node is not None:
                    node.set_attribute(attr.STATE_OUTCOME, attr.OUTCOME_EXECUTED)
                execute.set_status(ok)
                metrics = self.metrics
                if cpu_key is not None:
                    execute.set_attribute(cpu_key, 0.0)
                if metrics is not None:
                    metrics.node_duration.record((end - started) / 1e9, plan.outcome_attributes)
                    if cpu_key is not None:
                        metrics.node_cpu_time.record(0.0, plan.outcome_attributes)
                    metrics.executions.add(1, plan.outcome_attributes, context=no_span)
                execute.end(end)
                if node is not None:
                    node.end(end)
                context.detach(token)
            super().task_done()

    return FloorQueue


class Part:
    """One part's process-wide set-up: logging, the stand-ins, the providers, exo_otel or the floor, a
    runtime and its worker task. ``window`` is the measured call."""

    def __init__(self, mode: str, signals: str, keep: bool = False) -> None:
        if mode not in ("plain", "floor", "exo") or signals not in ("spans", "metrics"):
            raise ValueError(f"no part {mode}-{signals}")
        self.mode, self.signals = mode, signals
        self.sink = _Sink(keep)
        handler = logging.StreamHandler(self.sink)
        handler.setFormatter(logging.Formatter(LOG_FORMAT, defaults=LOG_DEFAULTS))
        root = logging.getLogger()
        root.handlers[:] = [handler]
        root.setLevel(logging.INFO)
        self.runtime_logger = logging.getLogger("exospherehost.runtime")

        import aiohttp.client
        from exospherehost import Runtime

        self.executed = 0
        self.polls = 0
        part = self

        # Each stand-in takes the parameters of what it replaces: exo_otel checks them before wrapping.
        async def no_network(self: Any, method: str, str_or_url: str, **kwargs: Any) -> None:
            return None

        async def recorded_enqueue_call(self: Any) -> Any:
            body = {"nodes": self._node_names, "batch_size": self._batch_size}
            await aiohttp.client.ClientSession._request(
                _SESSION, "POST", self._get_enque_endpoint(), json=body,
                headers={"x-api-key": self._key})
            part.polls += 1
            return self._exact_answers.pop()

        async def notify_executed(self: Any, state_id: str, outputs: list[Any]) -> None:
            body = {"outputs": [output.model_dump() for output in outputs]}
            await aiohttp.client.ClientSession._request(
                _SESSION, "POST", self._get_executed_endpoint(state_id), json=body,
                headers={"x-api-key": self._key})
            part.executed += 1

        async def notify_errored(self: Any, state_id: str, error: str) -> None:
            raise RuntimeError(f"state {state_id} errored in the benchmark: {error}")

        # Before exo_otel wraps them: its wrappers then wrap these, as they wrap the network calls.
        aiohttp.client.ClientSession._request = no_network  # type: ignore[method-assign,assignment]
        Runtime._enqueue_call = recorded_enqueue_call
        Runtime._notify_executed = notify_executed
        Runtime._notify_errored = notify_errored

        self.exporter = CountingExporter(keep)
        self.reader: Any = None
        self.floor_plans: dict[str, FloorPlan] = {}
        self.floor_poll: Any = None
        tracer_provider: Any = None
        meter_provider: Any = None
        if mode != "plain":
            from opentelemetry.sdk.metrics import MeterProvider
            from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor

            resource = Resource.create({"service.name": f"exact-{mode}-{signals}"})
            tracer_provider = TracerProvider(resource=resource)
            tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))  # type: ignore[arg-type]
            if signals == "metrics":
                from opentelemetry.sdk.metrics import Counter, Histogram

                # Delta: the check reads what each window recorded; nothing collects in a window.
                self.reader = InMemoryMetricReader(preferred_temporality={
                    Counter: AggregationTemporality.DELTA, Histogram: AggregationTemporality.DELTA})
                meter_provider = MeterProvider(metric_readers=[self.reader], resource=resource)
        self.tracer_provider, self.meter_provider = tracer_provider, meter_provider
        if mode == "exo":
            from opentelemetry.metrics import NoOpMeterProvider

            from exo_otel.sdk.instrumentor import ExosphereInstrumentor

            self.instrumentor = ExosphereInstrumentor()
            self.instrumentor.instrument(tracer_provider=tracer_provider,
                                         meter_provider=meter_provider or NoOpMeterProvider(),
                                         cpu_time=_cpu_time_on())
        self.runtime = Runtime(namespace=NAMESPACE, name=RUNTIME_NAME, nodes=_nodes(),
                               state_manager_uri="http://state-manager.invalid", key="exact-cost",
                               batch_size=BATCH, workers=1)
        self.runtime._exact_answers = []
        if mode == "floor":
            from exo_otel.core import attributes as attr
            from exo_otel.core.metrics import ExosphereMetrics

            metrics = None
            if meter_provider is not None:
                metrics = ExosphereMetrics.create(meter_provider.get_meter("exact_cost.floor"))
                self.floor_poll = metrics.poll_duration
            self.floor_poll_attributes = {attr.NAMESPACE: NAMESPACE}
            queue_class = _floor_queue_class()
            self.runtime._state_queue = queue_class(self.runtime._state_queue.maxsize,
                                                    tracer_provider.get_tracer("exact_cost.floor"),
                                                    metrics, self.floor_plans, tracer_provider.sampler)
        self.rng = random.Random(SEED)
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.worker = self.loop.create_task(self.runtime._worker(0))
        self.loop.run_until_complete(asyncio.sleep(0))  # the worker starts and waits for states

    # Set-up: outside the measured part.
    def prepare(self, kind: str, executions: int) -> Prepared:
        """The enqueue answers of ``executions // 48`` groups of 16 new runs (and the floor's plans)."""
        if kind not in KINDS or executions % GROUP:
            raise ValueError(f"{executions} executions of {kind}: whole groups of {GROUP} of a kind")
        from opentelemetry import trace
        from opentelemetry.context import Context
        from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, TraceFlags

        from exo_otel.core import attributes as attr
        from exo_otel.core.ids import run_span_id, state_span_id, trace_id_for_run
        from exo_otel.server.context import RunContext, enqueue_extension

        sampled = TraceFlags(TraceFlags.SAMPLED)
        rng = self.rng
        answers = []
        created = datetime.now(UTC).replace(tzinfo=None)
        created = created.replace(microsecond=created.microsecond // 1000 * 1000)  # as the server keeps it
        created_at = created.isoformat()
        created_ns = int(created.replace(tzinfo=UTC).timestamp() * 1_000_000_000)
        metric_sets = {node: {attr.NAMESPACE: NAMESPACE, attr.GRAPH_NAME: GRAPH, attr.NODE_NAME: node}
                       for node, _ in STEPS}
        outcome_sets = {node: {**attributes, attr.STATE_OUTCOME: attr.OUTCOME_EXECUTED}
                        for node, attributes in metric_sets.items()}
        for _ in range(executions // GROUP):
            runs = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(BATCH)]
            ids = [[f"{rng.getrandbits(96):024x}" for _ in STEPS] for _ in runs]
            values = [f"{rng.getrandbits(128):032x}" for _ in runs]
            for wave, (node_name, identifier) in enumerate(STEPS):
                states = []
                for index, run_id in enumerate(runs):
                    state_id = ids[index][wave]
                    parents = {STEPS[i][1]: ids[index][i] for i in range(wave)}
                    state: dict[str, Any] = {"state_id": state_id, "node_name": node_name,
                                             "identifier": identifier, "inputs": {"value": values[index]},
                                             "created_at": created_at}
                    trace_id = trace_id_for_run(run_id)
                    carrier: dict[str, str] | None = None
                    if kind == "embedded":
                        state.update(run_id=run_id, graph_name=GRAPH, parents=parents)
                        root = SpanContext(trace_id, run_span_id(run_id), is_remote=True, trace_flags=sampled)
                        parent = trace.set_span_in_context(NonRecordingSpan(root), Context())
                        upstream = state_span_id(ids[index][wave - 1])
                        links = [Link(SpanContext(trace_id, upstream, is_remote=True, trace_flags=sampled))
                                 ] if wave else []
                    else:
                        run = RunContext(run_id, NAMESPACE, GRAPH, created_ns, sampled=True)
                        state.update(enqueue_extension(run, parents, 0))
                        carrier = {key: state[key] for key in ("traceparent", "tracestate", "baggage")
                                   if key in state}
                        node = SpanContext(trace_id, state_span_id(state_id), is_remote=True,
                                           trace_flags=sampled)
                        run_root = trace.set_span_in_context(NonRecordingSpan(run.root_span_context()),
                                                             Context())
                        parent = trace.set_span_in_context(NonRecordingSpan(node), run_root)
                        links = []
                    states.append(state)
                    if self.mode == "floor":
                        self.floor_plans[state_id] = FloorPlan(
                            parent, kind == "side", links, created_ns, metric_sets[node_name],
                            outcome_sets[node_name], run_id, carrier, trace_id,
                            state_span_id(state_id) if kind == "side" else run_span_id(run_id),
                            state_span_id(ids[index][wave - 1]) if kind == "embedded" and wave else 0)
                answers.append({"count": len(states), "namespace": NAMESPACE, "status": "QUEUED",
                                "states": states})
        answers.reverse()  # popped from the end
        return Prepared(kind, answers, executions)

    # The measured part.
    def window(self, prepared: Prepared) -> None:
        """Serve the prepared answers: poll, enqueue (as ``Runtime._enqueue`` does, without its sleep),
        and let the worker execute and report every state."""
        self.runtime._exact_answers = prepared.answers
        self.loop.run_until_complete(self._serve(len(prepared.answers)))

    async def _serve(self, polls: int) -> None:
        runtime = self.runtime
        queue = runtime._state_queue
        for _ in range(polls):
            data = await runtime._enqueue_call()
            if self.floor_poll is not None:
                self.floor_poll.record(0.001, self.floor_poll_attributes)
            for state in data.get("states", []):
                await queue.put(state)
            self.runtime_logger.info(f"Enqueued states: {len(data.get('states', []))}")
            await queue.join()

    def close(self) -> None:
        self.worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            self.loop.run_until_complete(self.worker)
        self.loop.close()
        if self.mode == "exo":
            self.instrumentor.uninstrument()


_SESSION: Any = object()
"""The "session" the stand-ins' requests go through (``ClientSession._request`` is replaced)."""


# --- the child: one part in one process -----------------------------------------------------------------

def child(args: argparse.Namespace) -> None:
    callgrind = Callgrind(active=os.environ.get(CALLGRIND_ENV) == "1")
    part = Part(args.child, args.signals, keep=args.check)
    callgrind.start()
    report: dict[str, Any] = {"part": f"{args.child}-{args.signals}", "windows": {}}
    for kind in KINDS:
        if args.warmup:
            part.window(part.prepare(kind, args.warmup))
    for kind in KINDS:
        sizes = (args.executions,) if args.check else (0, args.executions)
        for size in sizes:
            prepared = part.prepare(kind, size)
            spans, executed, polls = part.exporter.count, part.executed, part.polls
            if part.reader is not None:
                part.reader.get_metrics_data()  # what the warm-up and earlier windows recorded: dropped
            if part.sink.lines is not None:
                part.sink.lines.clear()
            if part.exporter.spans is not None:
                part.exporter.spans.clear()
            gc.collect()
            gc.freeze()
            callgrind.toggle()
            part.window(prepared)
            callgrind.toggle()
            callgrind.dump(f"{kind} {size}")
            window = {"executions": part.executed - executed, "spans": part.exporter.count - spans,
                      "polls": part.polls - polls}
            if args.check:
                window.update(_check_details(part))
            report["windows"][f"{kind} {size}"] = window
    part.close()
    print(json.dumps(report), flush=True)


def _check_details(part: Part) -> dict[str, Any]:
    """What a window produced, for tests/sdk/test_exact_cost.py: the spans' shapes, the metric points and
    the log lines."""
    spans = []
    for span in part.exporter.spans or []:
        spans.append({
            "name": span.name, "kind": span.kind.name, "attributes": sorted((span.attributes or {}).keys()),
            "links": len(span.links), "events": [event.name for event in span.events],
            "status": span.status.status_code.name,
            "parent_remote": None if span.parent is None else span.parent.is_remote,
            "trace_id": f"{span.context.trace_id:032x}",
        })
    points = []
    if part.reader is not None:
        data = part.reader.get_metrics_data()
        for resource_metrics in data.resource_metrics if data is not None else []:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    for point in metric.data.data_points:
                        count = getattr(point, "count", None)
                        points.append({"name": metric.name, "attributes": dict(point.attributes or {}),
                                       "count": count if count is not None else point.value,
                                       "exemplars": len(getattr(point, "exemplars", []) or [])})
    return {"span_shapes": spans, "points": points, "log_lines": list(part.sink.lines or [])}


# --- the parent: callgrind processes, one at a time ------------------------------------------------------

def _child_env() -> dict[str, str]:
    # PYTHONPATH stays: the child imports the exo_otel this process would (a worktree's sources first).
    env = {k: v for k, v in os.environ.items()
           if k == "PYTHONPATH" or not k.startswith(("OTEL_", "EXOSPHERE_", "PYTHON"))}
    env["PYTHONHASHSEED"] = HASH_SEED
    env[CALLGRIND_ENV] = "1"
    return env


def _skip_every_c_function() -> list[str]:
    """``--fn-skip`` patterns for every named C function but the program's entry (which callgrind needs
    unskipped): their instructions go to the (trampoline of the) Python function that called them."""
    letters = [*"abcdefghijklmnopqrstuvwxyz", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
    patterns = [f"{c}*" for c in letters if c != "m"]
    patterns += [f"m{c}*" for c in letters if c != "a"] + [f"ma{c}*" for c in letters if c != "i"]
    patterns += [f"_{c}*" for c in letters if c not in "ds"] + [f"__{c}*" for c in letters if c != "l"]
    return [f"--fn-skip={p}" for p in patterns]


_DUMP_LABEL = "desc: Trigger: Client Request: "


@dataclass
class ChildRun:
    report: dict[str, Any]
    dumps: dict[str, Path]
    ir: dict[str, int]
    pid: int


def run_child(mode: str, signals: str, args: argparse.Namespace, out: Path, profile: bool) -> ChildRun:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    for old in out.glob("cg.*"):
        old.unlink()
    command = [valgrind, "--tool=callgrind", "--instr-atstart=no", "--collect-atstart=no",
               f"--callgrind-out-file={out}/cg.%p.out"]
    python = [sys.executable]
    if profile:
        command += ["--compress-strings=no", "--compress-pos=no", *_skip_every_c_function()]
        python += ["-X", "perf"]
    command += [*python, str(HERE), "--child", mode, "--signals", signals,
                "--executions", str(args.executions), "--warmup", str(args.warmup)]
    done = subprocess.run(command, env=_child_env(), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{mode}-{signals} under callgrind failed ({done.returncode}):\n"
                         f"{done.stderr[-4000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    dumps: dict[str, Path] = {}
    ir: dict[str, int] = {}
    pid = 0
    for path in sorted(out.glob("cg.*.out.*")):
        pid = int(path.name.split(".")[1])
        label = total = None
        with path.open() as lines:
            for line in lines:
                if line.startswith(_DUMP_LABEL):
                    label = line[len(_DUMP_LABEL):].strip()
                elif line.startswith(("summary:", "totals:")) and total is None:
                    total = int(line.split()[1])
        if label is not None and total is not None:
            dumps[label], ir[label] = path, total
    for kind in KINDS:
        for size in (0, args.executions):
            label = f"{kind} {size}"
            if label not in ir:
                raise SystemExit(f"{mode}-{signals}: no callgrind dump for the window {label!r}")
        window = report["windows"][f"{kind} {args.executions}"]
        if window["executions"] != args.executions:
            raise SystemExit(f"{mode}-{signals}: {window['executions']} of {args.executions} states executed")
    return ChildRun(report, dumps, ir, pid)


def per_execution(run: ChildRun, kind: str, executions: int) -> float:
    return (run.ir[f"{kind} {executions}"] - run.ir[f"{kind} 0"]) / executions


# --- the profile: instructions by Python function --------------------------------------------------------

_RECURSION = re.compile(r"'\d+$")


@dataclass
class Profile:
    """One window's instructions by function (a Python function's trampoline, or a native address)."""

    own: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    calls: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))

    @classmethod
    def read(cls, path: Path, names: dict[int, str]) -> Profile:
        profile = cls()

        def name(raw: str) -> str:
            raw = _RECURSION.sub("", raw.strip())
            if raw.startswith("0x"):
                return names.get(int(raw, 16), f"native {raw}")
            return raw

        function = callee = ""
        pending = False
        with path.open() as lines:
            for line in lines:
                if line.startswith("fn="):
                    function = name(line[3:])
                elif line.startswith("cfn="):
                    callee = name(line[4:])
                elif line.startswith("calls="):
                    pending = True
                elif line[:1].isdigit() or line[:1] in "+-*":
                    parts = line.split()
                    cost = int(parts[1]) if len(parts) > 1 else 0
                    if pending:
                        if callee != function:  # a recursive call is the function's own
                            profile.calls[(function, callee)] += cost
                        pending = False
                    else:
                        profile.own[function] += cost
        return profile

    def minus(self, other: Profile, scale: float) -> Profile:
        result = Profile()
        for key in set(self.own) | set(other.own):
            result.own[key] = round((self.own.get(key, 0) - other.own.get(key, 0)) * scale)
        for edge in set(self.calls) | set(other.calls):
            result.calls[edge] = round((self.calls.get(edge, 0) - other.calls.get(edge, 0)) * scale)
        return result

    def inclusive(self, function: str) -> int:
        return self.own.get(function, 0) + sum(c for (f, _), c in self.calls.items() if f == function)


def perf_names(pid: int) -> dict[int, str]:
    path = Path(f"/tmp/perf-{pid}.map")
    names: dict[int, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            start, _size, label = line.split(" ", 2)
            names[int(start, 16)] = label
        path.unlink()
    return names


def _exo_otel_dir() -> str:
    import exo_otel

    return str(Path(exo_otel.__file__).resolve().parent) + os.sep


LOG_CORRELATION = ("correlating_factory.<locals>.correlated_record", "_set_span_ids", "_redact_record")
EXO, LOGS, OTEL, FLOOR, RUNTIME = ("exo_otel code", "exo_otel log correlation", "OpenTelemetry",
                                   "the floor's own queue code", "runtime and the rest")
GROUPS = (EXO, LOGS, OTEL, FLOOR, RUNTIME)
_RUNTIME_PACKAGES = ("exospherehost", "pydantic", "aiohttp", "asyncio", "logging", "wrapt", "multidict")


def group_of(function: str, exo_dir: str) -> str | None:
    """The part a Python function belongs to; None for code that serves whoever calls it (the standard
    library but logging and asyncio, native code)."""
    if not function.startswith("py::"):
        return None
    qualname, _, path = function[4:].partition(":")
    if path.startswith(exo_dir):
        return LOGS if qualname in LOG_CORRELATION else EXO
    if f"{os.sep}opentelemetry{os.sep}" in path:
        return OTEL
    if path == str(HERE):
        return FLOOR if qualname.startswith("_floor_queue_class") else RUNTIME
    if any(f"{os.sep}{package}{os.sep}" in path for package in _RUNTIME_PACKAGES):
        return RUNTIME
    return None


def by_group(profile: Profile, exo_dir: str) -> dict[str, int]:
    """Every instruction in one group: a function of no group is charged to its costliest caller's."""
    callers: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for (caller, callee), cost in profile.calls.items():
        callers[callee].append((cost, caller))
    totals = dict.fromkeys(GROUPS, 0)
    for function, cost in profile.own.items():
        group, seen, current = group_of(function, exo_dir), set(), function
        while group is None and current not in seen and callers.get(current):
            seen.add(current)
            current = max(callers[current])[1]
            group = group_of(current, exo_dir)
        totals[group or RUNTIME] += cost
    return totals


def own_account(profile: Profile, exo_dir: str) -> dict[str, int]:
    """What each exo_otel function costs on its own account: its instructions, and those of the
    OpenTelemetry, standard library and exo_otel code it calls, but not the runtime code it wraps (the
    worker loop, the node). An exo_otel callee counts in the share of its own account that the call
    takes (the profile knows a function's callees, not which call made which)."""
    callees: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for (caller, callee), cost in profile.calls.items():
        callees[caller].append((callee, cost))
    accounts: dict[str, int] = {}

    def account(function: str) -> int:
        if function in accounts:
            return accounts[function]
        accounts[function] = 0  # a cycle adds nothing more
        total = profile.own.get(function, 0)
        for callee, cost in callees[function]:
            group = group_of(callee, exo_dir)
            if group in (RUNTIME, FLOOR):
                continue
            if group in (EXO, LOGS):
                inclusive = profile.inclusive(callee)
                total += round(cost * account(callee) / inclusive) if inclusive > 0 else 0
            else:
                total += cost
        accounts[function] = total
        return total

    return {f: account(f) for f in profile.own if group_of(f, exo_dir) in (EXO, LOGS)}


def short(function: str, exo_dir: str) -> str:
    qualname, _, path = function[4:].partition(":")
    return f"{qualname} ({path.removeprefix(exo_dir)})"


# --- the report ---------------------------------------------------------------------------------------------

def measure(args: argparse.Namespace, out: Path, started: float) -> dict[str, dict[str, float]]:
    """Instructions per execution, by part and kind."""
    results: dict[str, dict[str, float]] = {}
    for mode, signals in PARTS:
        run = run_child(mode, signals, args, out, profile=False)
        results[f"{mode}-{signals}"] = {kind: per_execution(run, kind, args.executions) for kind in KINDS}
        spans = {kind: run.report["windows"][f"{kind} {args.executions}"]["spans"] for kind in KINDS}
        print(f"  [{time.monotonic() - started:5.0f} s] {mode}-{signals}: " + ", ".join(
            f"{kind} {results[f'{mode}-{signals}'][kind]:,.0f} Ir/execution ({spans[kind]} spans)"
            for kind in KINDS), file=sys.stderr, flush=True)
    return results


def print_run(index: int, results: dict[str, dict[str, float]]) -> None:
    print(f"run {index}: instructions per node execution")
    print(f"  {'part':18} " + "  ".join(f"{KIND_LABELS[k]:>30}" for k in KINDS))
    for part, by_kind in results.items():
        print(f"  {part:18} " + "  ".join(f"{by_kind[k]:>30,.0f}" for k in KINDS))


def print_ratios(results: dict[str, dict[str, float]]) -> None:
    print("exo_otel's added instructions per execution against the SDK floor's (both over plain):")
    for kind in KINDS:
        plain = results["plain-spans"][kind]
        for signals in ("spans", "metrics"):
            added = results[f"exo-{signals}"][kind] - plain
            floor = results[f"floor-{signals}"][kind] - plain
            label = "spans only" if signals == "spans" else "spans + metrics"
            print(f"  {KIND_LABELS[kind]:30} {label:16} added {added:>10,.0f}  floor {floor:>10,.0f}  "
                  f"added / floor {added / floor:5.2f}  (beyond the floor: {added - floor:,.0f})")


def profile_pass(args: argparse.Namespace, out: Path, started: float) -> None:
    exo_dir = _exo_otel_dir()
    profiles: dict[str, dict[str, Profile]] = {}
    for mode, signals in PROFILED:
        run = run_child(mode, signals, args, out, profile=True)
        names = perf_names(run.pid)
        profiles[mode] = {}
        for kind in KINDS:
            full = Profile.read(run.dumps[f"{kind} {args.executions}"], names)
            empty = Profile.read(run.dumps[f"{kind} 0"], names)
            profiles[mode][kind] = full.minus(empty, 1 / args.executions)
        print(f"  [{time.monotonic() - started:5.0f} s] profile {mode}-{signals} done",
              file=sys.stderr, flush=True)
    print("profile pass (python -X perf, metrics on): instructions per execution by the code they run in")
    for kind in KINDS:
        print(f"  {KIND_LABELS[kind]}")
        groups = {mode: by_group(profiles[mode][kind], exo_dir) for mode in profiles}
        print(f"    {'':28} {'exo':>10} {'floor':>10} {'plain':>10} {'exo - plain':>12} "
              f"{'floor - plain':>14}")
        for group in (*GROUPS, "total"):
            values = {m: sum(g.values()) if group == "total" else g[group] for m, g in groups.items()}
            print(f"    {group:28} {values['exo']:>10,} {values['floor']:>10,} {values['plain']:>10,} "
                  f"{values['exo'] - values['plain']:>12,} {values['floor'] - values['plain']:>14,}")
        exo = profiles["exo"][kind]
        sdk_calls = sum(c for (f, g), c in exo.calls.items()
                        if group_of(f, exo_dir) in (EXO, LOGS) and group_of(g, exo_dir) == OTEL)
        print(f"    OpenTelemetry calls made by exo_otel code (inclusive): {sdk_calls:,}")
        files: dict[str, int] = defaultdict(int)
        for function, cost in exo.own.items():
            if group_of(function, exo_dir) in (EXO, LOGS):
                files[function[4:].partition(":")[2].removeprefix(exo_dir)] += cost
        print("    exo_otel's own instructions (in its code, not in what it calls) by file:")
        for name, cost in sorted(files.items(), key=lambda item: -item[1])[:args.top]:
            print(f"      {cost:>9,}  {name}")
        accounts = own_account(exo, exo_dir)
        print("    exo_otel functions by their own account (with the SDK and exo_otel code they call, "
              "not the runtime code they wrap) and own instructions:")
        for function in sorted(accounts, key=lambda f: -accounts[f])[:args.top]:
            print(f"      {accounts[function]:>9,}  own {exo.own[function]:>7,}  {short(function, exo_dir)}")


def main(args: argparse.Namespace) -> None:
    started = time.monotonic()
    print(f"workload: {args.executions} executions per window ({args.executions // GROUP} groups of {BATCH} "
          f"runs of a 3-node chain), warm-up {args.warmup}, PYTHONHASHSEED={HASH_SEED}; Python "
          f"{platform.python_version()}, {platform.machine()}, {os.cpu_count()} cores; callgrind Ir")
    runs = []
    with tempfile.TemporaryDirectory(prefix="exact-cost-") as folder:
        out = Path(folder)
        for index in range(1, args.runs + 1):
            print(f"run {index} of {args.runs}", file=sys.stderr, flush=True)
            runs.append(measure(args, out, started))
        for index, results in enumerate(runs, 1):
            print_run(index, results)
        if len(runs) > 1:
            print("difference between the runs (largest - smallest) / smallest:")
            worst = 0.0
            for part in runs[0]:
                cells = []
                for kind in KINDS:
                    values = [r[part][kind] for r in runs]
                    spread = (max(values) - min(values)) / min(values)
                    worst = max(worst, spread)
                    cells.append(f"{spread * 100:>29.4f}%")
                print(f"  {part:18} " + "  ".join(cells))
            verdict = "within" if worst <= 0.01 else "NOT within"
            print(f"  largest difference: {worst * 100:.4f}% ({verdict} 1%)")
        median = {part: {kind: statistics.median(r[part][kind] for r in runs) for kind in KINDS}
                  for part in runs[0]}
        print_ratios(median)
        if args.profile:
            profile_pass(args, out, started)
    print(f"total time {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executions", type=int, default=2 * GROUP,
                        help=f"per window, a multiple of {GROUP}")
    parser.add_argument("--warmup", type=int, default=GROUP, help="executions per kind before the windows")
    parser.add_argument("--runs", type=int, default=2, help="times everything is measured")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                        help="the breakdown by function (python -X perf)")
    parser.add_argument("--top", type=int, default=15, help="exo_otel functions listed by the profile")
    parser.add_argument("--cpu-time", action=argparse.BooleanOptionalAction, default=False,
                        help="exo_otel's CPU-time accounting on, or off (the default, as in exo_otel), "
                             "the floor alike")
    parser.add_argument("--floor-parents", action=argparse.BooleanOptionalAction, default=True,
                        help="the floor makes, in the measured part, the SDK calls any instrumentation "
                             "makes for these spans' parents and links (the run's carrier extracted, or the "
                             "sampler asked, once per run; span contexts per state), the ids still given "
                             "(the default); --no-floor-parents hands it the parent contexts ready-made")
    parser.add_argument("--child", choices=["plain", "floor", "exo"], help=argparse.SUPPRESS)
    parser.add_argument("--signals", choices=["spans", "metrics"], default="spans", help=argparse.SUPPRESS)
    parser.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.executions <= 0 or arguments.executions % GROUP or arguments.warmup % GROUP:
        parser.error(f"--executions and --warmup are multiples of {GROUP} (--executions at least {GROUP})")
    if not arguments.child:  # the children read these, set by the invocation that starts them
        os.environ[CPU_TIME_ENV] = "1" if arguments.cpu_time else "0"
        os.environ[FLOOR_PARENTS_ENV] = "1" if arguments.floor_parents else "0"
    if arguments.child:
        child(arguments)
    else:
        main(arguments)
