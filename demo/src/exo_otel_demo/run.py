"""`exo-otel demo`: run the demo graph, instrumented, on the embedded state manager; print each run's trace.

Everything runs in this process: the embedded state manager, an exospherehost Runtime and the
trigger side. With ``server_side`` the embedded state manager runs exo_otel's state manager side (the
set-up the README recommends): the server emits each run's root ``run {graph}``, its outcome
``settle {graph}`` and the ``node`` spans, the runtime the ``execute`` spans, and the client's
``trigger`` span is a child of ``run``. Without it the ``trigger`` span is the root and the runtime
emits the ``node`` spans too. Spans are kept in memory for the terminal waterfall; with
``OTEL_EXPORTER_OTLP_ENDPOINT`` set they (and the metrics) are also exported over OTLP, and with
``OTEL_METRICS_EXPORTER=prometheus`` the metrics are served for a Prometheus scraper.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from exospherehost import Runtime, StateManager

from exo_otel.core.attributes import RUN_STATUS
from exo_otel.core.ids import outcome_span_id, run_span_id, state_span_id
from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from exo_otel_demo.embedded import EmbeddedStateManager
from exo_otel_demo.graph import (
    FAILURE_TEXT,
    GRAPH_NAME,
    ITEMS_PER_RUN,
    NAMESPACE,
    NODES,
    RETRY_POLICY,
    ScoringError,
    graph_nodes,
)
from exo_otel_demo.links import run_links
from exo_otel_demo.telemetry import DemoTelemetry, TelemetryError
from exo_otel_demo.waterfall import render_waterfall

RUNTIME_NAME: Final = "exo-otel-demo"
POLL_INTERVAL_S: Final = 0.05
DEFAULT_RUNS: Final = 3
DEFAULT_TIMEOUT_S: Final = 30.0
"""Bound on each wait (registration, the runs, their spans): the demo never hangs."""
NOT_EXPORTED_NOTE: Final = (
    "The spans stayed in this process. To open the traces in Jaeger or Grafana, export them:\n"
    "  OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4317 exo-otel demo   (the stack in deploy/jaeger)"
)


@dataclass(frozen=True)
class DemoOptions:
    """What `run_demo` does.

    Attributes:
        runs: how many runs to trigger.
        hold_s: seconds to keep serving (metrics, runtime polling) after the runs finished;
            SIGINT or SIGTERM ends the hold early, and the demo still exits cleanly.
        interval_s: pause between two triggers (spreads the runs over several metric scrapes).
        prometheus: serve metrics for Prometheus; None reads ``OTEL_METRICS_EXPORTER``.
        timeout_s: bound on each wait.
        server_side: run the embedded state manager with exo_otel's state manager side.
    """

    runs: int = DEFAULT_RUNS
    hold_s: float = 0.0
    interval_s: float = 0.0
    prometheus: bool | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    server_side: bool = False


class DemoError(Exception):
    """The demo could not complete (a wait timed out, the runtime died); the message says why."""


@dataclass(frozen=True)
class _Run:
    index: int
    run_id: str
    started: float


def _say(message: str) -> None:
    print(message, flush=True)


async def _wait(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.02)
    return result


def _spans_complete(
    telemetry: DemoTelemetry, sm: EmbeddedStateManager, run_id: str, server_side: bool
) -> bool:
    """True once the run's root and the node span of every state a runtime executed have ended, and,
    with the state manager side, the run's outcome (``settle``) and every state's node span.

    The root's span id is the run's either way: the trigger's, or the server's ``run``. Without the
    side, fan-out copies of a state were never queued (no runtime executed them), so they are not
    awaited; the side emits them with the rest, and the outcome once the run has settled.
    """
    ended = {span.context.span_id for span in telemetry.run_spans(run_id) if span.context is not None}
    states = sm.states(run_id)
    if server_side:
        expected = {run_span_id(run_id), outcome_span_id(run_id)} | {state_span_id(s.id) for s in states}
    else:
        executed = (s for s in states if any(c.status == "QUEUED" for c in s.history))
        expected = {run_span_id(run_id)} | {state_span_id(state.id) for state in executed}
    return expected <= ended


def _traced_status(telemetry: DemoTelemetry, run_id: str) -> str | None:
    """The run's status as its trace says it: the ``settle`` span's ``exosphere.run.status``."""
    for span in telemetry.run_spans(run_id):
        if span.context is not None and span.context.span_id == outcome_span_id(run_id) and span.attributes:
            status = span.attributes.get(RUN_STATUS)  # SUCCESS or FAILED
            return str(status) if status is not None else None
    return None


def _settled(telemetry: DemoTelemetry, quiet_s: float = 0.1) -> Callable[[], bool]:
    last = [-1, time.monotonic()]

    def settled() -> bool:
        count = len(telemetry.spans.get_finished_spans())
        if count != last[0]:
            last[:] = [count, time.monotonic()]
        return time.monotonic() - last[1] >= quiet_s

    return settled


class _HideDemoFailure(logging.Filter):
    """Drops the runtime's log of the failure ScoreItem raises on purpose; the waterfall shows it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return ScoringError.__name__ not in record.getMessage() and FAILURE_TEXT not in record.getMessage()


def _run_finished(sm: EmbeddedStateManager, run_id: str) -> Callable[[], str | None]:
    def finished() -> str | None:
        status = sm.run_status(run_id)
        return None if status in (None, "PENDING") else str(status)

    return finished


async def _trigger_and_wait(options: DemoOptions, sm: EmbeddedStateManager) -> list[tuple[_Run, str]]:
    client = StateManager(namespace=NAMESPACE, state_manager_uri=sm.uri, key=sm.api_key)
    await client.upsert_graph(
        GRAPH_NAME, graph_nodes(), {}, retry_policy=RETRY_POLICY, polling_interval=POLL_INTERVAL_S
    )
    _say(f"graph {GRAPH_NAME!r} registered in namespace {NAMESPACE!r}")
    runs = []
    for index in range(1, options.runs + 1):
        if index > 1 and options.interval_s > 0:
            await asyncio.sleep(options.interval_s)
        batch = f"batch-{index}-{uuid.uuid4().hex[:6]}"
        answer = await client.trigger(GRAPH_NAME, inputs={"batch_id": batch, "size": str(ITEMS_PER_RUN)})
        runs.append(_Run(index, str(answer["run_id"]), time.monotonic()))
        _say(f"[{index}/{options.runs}] triggered run {answer['run_id']} ({batch})")
    finished = []
    for run in runs:
        status = await _wait(_run_finished(sm, run.run_id), options.timeout_s, f"run {run.run_id}")
        elapsed = time.monotonic() - run.started
        _say(f"[{run.index}/{options.runs}] run {run.run_id} finished: {status} ({elapsed:.1f} s)")
        finished.append((run, str(status)))
    return finished


def _report(telemetry: DemoTelemetry, finished: list[tuple[_Run, str]]) -> None:
    for run, status in finished:
        links = run_links(run.run_id)
        _say("")
        _say(f"run {run.index}")
        _say(f"  run id:     {run.run_id}")
        _say(f"  trace id:   {links.trace_id}")
        # As the trace says it (the settle span, with the state manager side), which is what a
        # backend shows; the state manager's own answer when the trace has no outcome.
        _say(f"  run status: {_traced_status(telemetry, run.run_id) or status}")
        if telemetry.exports_spans:  # links only where the spans went
            _say(f"  jaeger:     {links.jaeger}")
            _say(f"  grafana:    {links.grafana}")
        _say(render_waterfall(telemetry.run_spans(run.run_id)))
    if not telemetry.exports_spans:
        _say(f"\n{NOT_EXPORTED_NOTE}")


async def _hold(seconds: float) -> None:
    """Sleep, until SIGINT or SIGTERM if one comes first (the demo then shuts down normally)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


async def _demo(options: DemoOptions, telemetry: DemoTelemetry) -> int:
    async with EmbeddedStateManager(
        expose_run_context=not options.server_side,
        server_side=options.server_side,
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
    ) as sm:
        _say(f"embedded state manager on {sm.uri}")
        if options.server_side:
            _say("  with exo_otel's state manager side: the server emits the run, settle and node spans")
        runtime = Runtime(
            namespace=NAMESPACE,
            name=RUNTIME_NAME,
            nodes=list(NODES),
            state_manager_uri=sm.uri,
            key=sm.api_key,
            workers=4,
            poll_interval=POLL_INTERVAL_S,
        )
        task = runtime.start()
        assert task is not None  # Runtime.start returns its task when a loop is running
        try:
            names = {node.__name__ for node in NODES}
            await _wait(lambda: task.done() or names <= sm.registered_nodes(NAMESPACE), options.timeout_s,
                        "the runtime to register its nodes")
            if task.done():
                raise DemoError(f"the runtime stopped: {task.exception()!r}")
            _say(f"runtime {RUNTIME_NAME!r} registered {', '.join(sorted(names))}")
            finished = await _trigger_and_wait(options, sm)
            for run, _status in finished:
                run_id = run.run_id
                complete = functools.partial(_spans_complete, telemetry, sm, run_id, options.server_side)
                await _wait(complete, options.timeout_s, f"the spans of run {run_id}")
            # Spans the instrumentation makes besides the awaited ones (fan-out copies) end within
            # moments of them: wait until nothing new arrives for a little while.
            await _wait(_settled(telemetry), options.timeout_s, "the spans to settle")
            _report(telemetry, finished)
            if options.hold_s > 0:
                _say(f"\nholding {options.hold_s:g} s{telemetry.serving_note()}; Ctrl-C ends it")
                await _hold(options.hold_s)
            return 0 if all(status == "SUCCESS" for _run, status in finished) else 1
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def run_demo(options: DemoOptions | None = None) -> int:
    """Run the demo and shut its telemetry down; returns the exit status (0: every run succeeded)."""
    options = options if options is not None else DemoOptions()
    # The SDK logs every poll at INFO; the demo prints its own progress instead.
    logging.getLogger("exospherehost").setLevel(logging.WARNING)
    runtime_logger, hide = logging.getLogger("exospherehost.runtime"), _HideDemoFailure()
    runtime_logger.addFilter(hide)
    try:
        telemetry = DemoTelemetry.start(prometheus=options.prometheus)
    except TelemetryError as error:
        print(f"exo-otel demo: {error}", flush=True)
        return 2
    for line in telemetry.describe():
        _say(line)
    instrumentor = ExosphereInstrumentor()
    # CPU time on: the demo shows what each run cost (the dashboard's Cost row).
    instrumentor.instrument(
        tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider, cpu_time=True
    )
    try:
        return asyncio.run(_demo(options, telemetry))
    except DemoError as error:
        print(f"exo-otel demo: {error}", flush=True)
        return 1
    finally:
        instrumentor.uninstrument()
        _shut_down(telemetry)
        runtime_logger.removeFilter(hide)


def _shut_down(telemetry: DemoTelemetry) -> None:
    """Flush the telemetry, saying so when it goes over the network (a collector may be down)."""
    endpoint = telemetry.otlp_endpoint
    if endpoint is None:
        telemetry.shutdown()
        return
    _say(f"\nflushing spans and metrics to {endpoint} ...")
    started = time.monotonic()
    telemetry.shutdown()
    elapsed = time.monotonic() - started
    undelivered = telemetry.undelivered_spans()
    if undelivered:
        _say(f"could not deliver {undelivered} spans to {endpoint} ({elapsed:.1f} s): is the collector up?")
    else:
        _say(f"flushed in {elapsed:.1f} s")
