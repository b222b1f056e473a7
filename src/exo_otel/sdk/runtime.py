"""The runtime side: each state a `Runtime` polls carries its run's context through the worker queue."""

from __future__ import annotations

import asyncio
import contextvars
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Final

from opentelemetry.instrumentation.utils import is_instrumentation_enabled, suppress_http_instrumentation
from opentelemetry.trace import SpanContext

from exo_otel.core import attributes as attr
from exo_otel.core.cpu_report import CPU_TIME_HEADER, cpu_time_header
from exo_otel.core.spans import guard
from exo_otel.core.wrapping import AsyncMethod, call_argument
from exo_otel.sdk.config import PlacementMode
from exo_otel.sdk.context_keys import instrumentation_enabled
from exo_otel.sdk.cpu_time import CpuMeter, metered_node_call
from exo_otel.sdk.execution import Execution, begin, finish, record_outputs
from exo_otel.sdk.fanout import FanOut, FanOutsUnderWay
from exo_otel.sdk.placement import PlacementMemory, UnplacedReporter
from exo_otel.sdk.request_headers import add_headers, adding_headers, stop_adding
from exo_otel.sdk.run_api_placement import RunApiPlacement
from exo_otel.sdk.run_traces import RunTrace, RunTraces
from exo_otel.sdk.state_context import PolledState, RunInfo, has_payload_run, run_from_payload
from exo_otel.sdk.telemetry import Telemetry

TRACING_ATTRIBUTE = "_exo_otel_tracing"

# The guards of the per-state path, made once (a guard holds nothing but what it says).
_PLACING: Final = guard("placing a state")
_STARTING: Final = guard("starting a state's spans")
_ENDING: Final = guard("ending a state's spans")
_NOTING_REPORT: Final = guard("noting a state's report")
_NOTING_EXECUTED: Final = guard("noting outcome executed")
_TRACING_FANOUT: Final = guard("tracing fan-out copies")

# The execution the current worker task is in: set when a worker takes a state off the queue,
# read by the notification wrappers, cleared when the worker marks the task done.
_current_execution: contextvars.ContextVar[Execution | None] = contextvars.ContextVar(
    "exo_otel_execution", default=None
)
current_execution = _current_execution  # for the worker and secrets wrappers


class RuntimeTracing:
    """Per-runtime bookkeeping: the states polled and not yet taken by a worker, and where their spans go."""

    def __init__(self, telemetry: Telemetry, runtime: Any) -> None:
        self.telemetry = telemetry
        self.runtime = runtime
        self.polled: dict[str, PolledState] = {}
        self.memory = PlacementMemory()
        self.unplaced = UnplacedReporter(telemetry.metrics)
        self._fanouts = FanOutsUnderWay(RunApiPlacement.WATCH_TTL_S)
        self._run_api_placement: RunApiPlacement | None = None
        self._traces: RunTraces | None = None
        self.poll_s: float | None = None
        """How long the last poll that brought states took."""

    @property
    def traces(self) -> RunTraces:
        """What this runtime derived of each run (made on first use: the runtime's settings are final)."""
        if self._traces is None:
            self._traces = RunTraces(self.namespace, self.telemetry.sampler)
        return self._traces

    @property
    def namespace(self) -> str:
        return str(getattr(self.runtime, "_namespace", ""))

    def on_polled(self, answer: Any) -> None:
        """Place what an enqueue answer allows at once; hand the rest to the run API placement. No I/O."""
        states = answer.get("states") if isinstance(answer, dict) else None
        if not isinstance(states, list):
            return
        mode = self.telemetry.settings.placement
        uses_payload = mode.uses_payload
        unknown = []
        for state in states:
            if not isinstance(state, dict) or not isinstance(state.get("state_id"), str):
                continue
            if uses_payload and has_payload_run(state):
                continue  # placed from its payload when a worker takes it: nothing to do now
            state_id = state["state_id"]
            run = None
            if mode.uses_run_api and self.memory.get(state_id) is None:
                run = self.run_api_placement().known(state_id)
                if run is None:
                    unknown.append(state_id)
            self.polled[state_id] = PolledState.from_payload(state, run)
        if unknown:
            self.run_api_placement().want(unknown)

    def _from_payload(self, state: dict[str, Any]) -> PolledState:
        """A state the poll left to its worker: its run is the payload's (when that is used), if any."""
        run = run_from_payload(state) if self.telemetry.settings.placement.uses_payload else None
        return PolledState.from_payload(state, run, run_from_payload=run is not None)

    def run_api_placement(self) -> RunApiPlacement:
        """The run API client, made on first use (the runtime's settings are final by then)."""
        if self._run_api_placement is None:
            runtime = self.runtime
            self._run_api_placement = RunApiPlacement(
                str(runtime._state_manager_uri),
                self.namespace,
                str(runtime._key),
                version=str(runtime._state_manager_version),
                calls_per_second=self.telemetry.settings.run_api_budget,
            )
        return self._run_api_placement

    async def close(self) -> None:
        """The runtime stopped: stop the run API placement's task and close its HTTP session."""
        if self._run_api_placement is not None:
            await self._run_api_placement.close()

    async def place(self, state: Any, wait: bool = True) -> Placement | None:
        """Where the spans of a state a worker took go: its run and its upstream state's node span,
        waiting briefly for the run API placement when that can pay (``wait``). Changes nothing, so a
        worker cancelled while it waits loses nothing; `start` acts on the answer. None: no spans."""
        if not isinstance(state, dict) or not self.telemetry.enabled or not instrumentation_enabled():
            return None
        state_id = str(state.get("state_id"))
        polled = self.polled.get(state_id) or self._from_payload(state)
        # One bound for all the waiting a worker does for one state (worked out only if something waits).
        deadline = _Deadline(self._wait_s if wait else _no_wait)
        searched = False
        earlier = self.memory.get(state_id)
        if earlier is not None:
            # A requeued state: every attempt keeps the trace of the first, so none names a missing span.
            polled = replace(polled, run=earlier.run)
        elif polled.run is None:
            searched = True
            polled = await self._find_run(polled, deadline)
        run = polled.run
        run_trace = self.traces.of(run) if run is not None else None
        upstream = None
        # The upstream state's node span is linked from this state's node span: none to work out when
        # the server emits the node spans.
        if run is not None and run.parent_state_id is not None and not (
            run_trace is not None and run_trace.node_spans_by_server
        ):
            now = self._upstream_now(polled, run, run.parent_state_id, run_trace)
            if isinstance(now, _AfterFanOuts):
                upstream = await self._upstream_after_fanouts(polled, run, run.parent_state_id, deadline)
                run_trace = self.traces.of(run)  # the same (a function of the run), if forgotten meanwhile
            else:
                upstream = now
        return Placement(polled, upstream, searched, run_trace)

    def start(self, state: dict[str, Any], placement: Placement) -> None:
        """Start the state's spans where `place` put them and make its execute span current. No await."""
        polled = placement.state
        self.polled.pop(polled.state_id, None)
        if placement.searched:
            if self._uses_run_api():
                self.run_api_placement().taken(polled.state_id)
            if polled.run is None and self.telemetry.settings.placement is not PlacementMode.NONE:
                self.unplaced.report({attr.NAMESPACE: self.namespace, attr.NODE_NAME: polled.node_name})
        execution = begin(
            self.telemetry, polled, state, self.namespace, placement.upstream, self.traces,
            placement.run_trace,
        )
        if not polled.run_from_payload:
            # A state placed from its payload is placed alike by every attempt and every runtime, and
            # its upstream span's place follows from the run: nothing to remember (and nothing kept alive).
            self.memory.remember(polled.state_id, polled.run, execution.node_span.get_span_context())
        _current_execution.set(execution)

    def _uses_run_api(self) -> bool:
        settings = self.telemetry.settings
        return settings.placement.uses_run_api and settings.run_api_budget > 0

    async def _find_run(self, polled: PolledState, deadline: _Deadline) -> PolledState:
        """A state the poll brought with no run: what the run API placement knows, waited for briefly."""
        if self._uses_run_api():
            run_api = self.run_api_placement()
            run = run_api.known(polled.state_id)
            if run is None and deadline.left() > 0:
                # Before the run APIs' first answer the first call may take the whole bound (a failure
                # ends the wait at once); after it their speed rules (`_wait_s`).
                run = await run_api.wait(polled.state_id, deadline.left())
            polled = replace(polled, run=run)
        return polled

    def warm(self) -> None:
        """The runtime is starting: with ``placement="run_api"``, learn how the run APIs answer
        before the first state arrives. With ``auto`` nothing is asked until a poll brings a state
        without its run, so that with the state manager side a runtime makes no run API call at all."""
        settings = self.telemetry.settings
        if (settings.placement is PlacementMode.RUN_API and settings.run_api_budget > 0
                and settings.placement_wait_ms > 0):
            self.run_api_placement().probe()

    def _wait_s(self) -> float:
        """How long a worker may wait for the run API placement now (0 when it is failing or slow, and
        before the run APIs' first answer when no poll was timed: nothing to presume their speed from)."""
        wait_s = self.telemetry.settings.placement_wait_ms / 1000
        run_api = self.run_api_placement()
        if not run_api.answered and self.poll_s is None:
            return 0.0
        return wait_s if run_api.can_place_within(wait_s) else 0.0

    def _upstream_now(
        self, polled: PolledState, run: RunInfo, parent_state_id: str, run_trace: RunTrace | None = None
    ) -> SpanContext | _AfterFanOuts | None:
        """Where the direct upstream state's node span is, when this runtime can be sure of it now;
        `_AFTER_FANOUTS` when a fan-out of the run is under way here (the upstream state may be a copy
        whose span is about to be emitted)."""
        known = self.memory.get(parent_state_id)
        if known is not None:
            return known.context
        if self._fanouts.under_way(run.run_id):
            return _AFTER_FANOUTS
        if polled.run_from_payload:
            # The server gives every runtime the run: the upstream state's span is in the run's trace.
            return (run_trace or self.traces.of(run)).state_context(parent_state_id)
        # Found through the run APIs, upstream executed elsewhere: its runtime may have placed it in no run.
        return None

    async def _upstream_after_fanouts(
        self, polled: PolledState, run: RunInfo, parent_state_id: str, deadline: _Deadline
    ) -> SpanContext | None:
        """The upstream state's node span once this runtime's fan-outs of the run have their spans, or
        the wait is over (then only a span known to be emitted is named). The copies get their spans from
        a run graph the run API placement fetches: the wait ends too when it can fetch none."""
        left = deadline.left()
        if left > 0:
            await self.run_api_placement().hold(self._fanouts.wait(run.run_id, left), left)
        answer = self._upstream_now(polled, run, parent_state_id)
        return None if isinstance(answer, _AfterFanOuts) else answer

    def on_finished(self, execution: Execution) -> None:
        """A state's attempt is over: if it made next states (or a retry), its run is about to grow."""
        run = execution.state.run
        if execution.state.run_from_payload:
            return  # the run's next states come with their run too: nothing to look up
        if run is not None and execution.outcome in (attr.OUTCOME_EXECUTED, attr.OUTCOME_ERRORED):
            settings = self.telemetry.settings
            if settings.placement.uses_run_api and settings.run_api_budget > 0:
                self.run_api_placement().expect_growth(run.run_id)

    def on_fanned_out(self, execution: Execution) -> None:
        """A state reported several outputs: emit its copies' spans once a run graph names them."""
        if execution.state.node_spans_by_server:
            return  # the server emits every state's node span, copies included
        state = execution.state
        run_id = state.run.run_id if state.run is not None else None
        if run_id is not None:
            # Until the copies have spans, no state of the run links to a state this runtime does not know.
            self._fanouts.start(run_id)
        if state.run_from_payload:
            # Its next states may wait for the copies' spans: then they link only to spans known here.
            self.memory.remember(state.state_id, state.run, execution.node_span.get_span_context())
        settings = self.telemetry.settings
        if settings.run_api_budget <= 0 or settings.placement is PlacementMode.NONE:
            return
        fan_out = FanOut.of(execution, self.memory, self._fanouts)
        self.run_api_placement().watch(fan_out.emit, execution.state.state_id, run_id)


@dataclass(slots=True)
class Placement:
    """`RuntimeTracing.place`'s answer: the state as placed, its upstream node span, whether it was
    looked up (a state placed by an earlier attempt is not), its run's trace (None: no run). Never
    changed once made; not frozen: one is made per state, on the hot path (a frozen one costs ~6k
    instructions more to make)."""

    state: PolledState
    upstream: SpanContext | None
    searched: bool
    run_trace: RunTrace | None = None


def _no_wait() -> float:
    return 0.0


class _AfterFanOuts:
    """`_upstream_now`'s answer when it must wait for this runtime's fan-outs of the run."""


_AFTER_FANOUTS: Final = _AfterFanOuts()


class _Deadline:
    """When a worker stops waiting for one state's placement; worked out only if something waits."""

    __slots__ = ("_at", "_wait_s")

    def __init__(self, wait_s: Callable[[], float]) -> None:
        self._wait_s = wait_s
        self._at: float | None = None

    def left(self) -> float:
        if self._at is None:
            self._at = time.monotonic() + self._wait_s()
        return self._at - time.monotonic()


class TracedStateQueue(asyncio.Queue[Any]):
    """The runtime's worker queue: taking a state starts its execution, marking it done ends it.

    The SDK's worker awaits ``get()`` directly, so a context attached inside it stays current in
    the worker task until ``task_done()``.
    """

    def __init__(self, maxsize: int, tracing: RuntimeTracing) -> None:
        super().__init__(maxsize)
        self.tracing = tracing

    async def get(self) -> Any:
        state = await super().get()
        tracing = self.tracing
        placement = None
        try:
            placement = await tracing.place(state)
        except Exception as exc:
            _PLACING.failed(exc)
        except asyncio.CancelledError as cancelled:
            # Cancelled while exo_otel waited: without exo_otel this worker would be running the node
            # by now. So it does, placed with what is known, and the cancellation lands at its next
            # await, as it would have: no state is taken off the queue and dropped.
            with _PLACING:
                placement = await tracing.place(state, wait=False)
            self._start(state, placement)
            _cancel_again(cancelled)
            return state
        self._start(state, placement)
        return state

    def _start(self, state: Any, placement: Placement | None) -> None:
        try:
            if placement is not None:
                self.tracing.start(state, placement)
            elif isinstance(state, dict):
                self.tracing.polled.pop(str(state.get("state_id")), None)  # no spans: forget it
        except Exception as exc:
            _STARTING.failed(exc)

    def task_done(self) -> None:
        execution = _current_execution.get()
        if execution is not None:
            _current_execution.set(None)
            try:
                finish(execution)
            except Exception as exc:
                _ENDING.failed(exc)
            if not execution.state.run_from_payload:  # else nothing to note (`on_finished`)
                try:
                    self.tracing.on_finished(execution)
                except Exception as exc:
                    _NOTING_REPORT.failed(exc)
        super().task_done()


def _cancel_again(cancelled: asyncio.CancelledError) -> None:
    """Request again the cancellation this task just caught, so it is raised at the task's next await.
    The count of requests (`Task.cancelling`) stays what it was: timeouts and task groups see one. A
    CancelledError no one requested of the task (a future exo_otel awaited was cancelled) ends only
    exo_otel's wait."""
    task = asyncio.current_task()
    if task is not None and task.cancelling() > 0:
        task.uncancel()
        task.cancel(cancelled.args[0] if cancelled.args else None)


def make_runtime_init_wrapper(telemetry: Telemetry) -> Callable[..., None]:
    """After ``Runtime.__init__``, give the runtime a traced worker queue."""

    def traced_init(
        wrapped: Callable[..., None], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        wrapped(*args, **kwargs)
        with guard("tracing a runtime's queue"):
            queue = instance._state_queue
            tracing = RuntimeTracing(telemetry, instance)
            instance._state_queue = TracedStateQueue(queue.maxsize, tracing)
            setattr(instance, TRACING_ATTRIBUTE, tracing)

    return traced_init


def make_start_wrapper(telemetry: Telemetry) -> AsyncMethod:
    """Around ``Runtime._start``: probe the run APIs as it starts; when it stops, stop its run API
    placement and close its session (which also close by themselves when idle or when the event loop
    shuts down)."""

    async def traced_start(
        wrapped: AsyncMethod, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        tracing = getattr(instance, TRACING_ATTRIBUTE, None)
        if isinstance(tracing, RuntimeTracing) and is_instrumentation_enabled():
            with guard("probing the run APIs"):
                tracing.warm()
        try:
            return await wrapped(*args, **kwargs)
        finally:
            if isinstance(tracing, RuntimeTracing):
                with guard("closing a runtime's run API placement"):
                    await tracing.close()

    return traced_start


def make_poll_wrapper(telemetry: Telemetry) -> AsyncMethod:
    """Around ``Runtime._enqueue_call``: no spans (not even HTTP ones), a poll duration; what the run
    APIs must place is handed to the background (the poll never waits for it)."""

    async def traced_poll(
        wrapped: AsyncMethod, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        tracing = getattr(instance, TRACING_ATTRIBUTE, None)
        if not instrumentation_enabled() or not isinstance(tracing, RuntimeTracing):
            return await wrapped(*args, **kwargs)
        started = time.perf_counter()
        # Polling runs every poll_interval: its HTTP spans would bury the runs.
        with suppress_http_instrumentation():
            answer = await wrapped(*args, **kwargs)
            with guard("recording a poll"):
                elapsed = time.perf_counter() - started
                telemetry.metrics.poll_duration.record(elapsed, {attr.NAMESPACE: tracing.namespace})
                if isinstance(answer, dict) and answer.get("states"):
                    tracing.poll_s = elapsed
                tracing.on_polled(answer)
        return answer

    return traced_poll


async def _report(
    wrapped: AsyncMethod, args: tuple[Any, ...], kwargs: dict[str, Any], headers: dict[str, str] | None
) -> Any:
    """The SDK's report of a state's outcome, its requests made with ``headers`` added."""
    token = add_headers(headers)
    try:
        return await wrapped(*args, **kwargs)
    finally:
        stop_adding(token)


def make_executed_wrapper(telemetry: Telemetry) -> AsyncMethod:
    """Around ``Runtime._notify_executed``: note the outcome; after a fan-out, give its copies spans."""

    async def reported_then_fanned_out(
        wrapped: AsyncMethod,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        headers: dict[str, str] | None,
        tracing: RuntimeTracing,
        execution: Execution,
    ) -> Any:
        result = await _report(wrapped, args, kwargs, headers)
        with _TRACING_FANOUT:
            # The executed answer does not name the copies; a later run graph does (background).
            tracing.on_fanned_out(execution)
        return result

    # Not a coroutine function: with nothing to do after the report (no headers, no fan-out), it hands
    # back the SDK's own coroutine, noting the outcome when the SDK makes the call.
    def traced_executed(
        wrapped: AsyncMethod, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        execution = _current_execution.get()
        if execution is None:
            return _report(wrapped, args, kwargs, None)
        headers = None
        try:
            # `_note_outcome` and `_report_headers`, called only when they have more to do (once per state).
            execution.outcome = attr.OUTCOME_EXECUTED
            if execution.telemetry.settings.capture_io:
                _note_outcome(execution, attr.OUTCOME_EXECUTED, instance, args, kwargs)
            if execution.cpu is not None:
                headers = _report_headers(execution)
        except Exception as exc:
            _NOTING_EXECUTED.failed(exc)
        outputs = call_argument(args, kwargs, 1, "outputs", None)
        if isinstance(outputs, list) and len(outputs) > 1:
            tracing = getattr(instance, TRACING_ATTRIBUTE, None)
            if isinstance(tracing, RuntimeTracing):
                return reported_then_fanned_out(wrapped, args, kwargs, headers, tracing, execution)
        if headers is None and not adding_headers():
            return wrapped(*args, **kwargs)
        return _report(wrapped, args, kwargs, headers)

    return traced_executed


def _outcome_wrapper(outcome: str) -> Callable[[Telemetry], AsyncMethod]:
    """Wrap a call that tells the state manager a state's outcome: remember it on the execution."""

    noting = guard(f"noting outcome {outcome}")

    def factory(telemetry: Telemetry) -> AsyncMethod:
        # Not a coroutine function, as the executed wrapper.
        def traced_report(
            wrapped: AsyncMethod, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            execution = _current_execution.get()
            headers = None
            if execution is not None:
                with noting:
                    _note_outcome(execution, outcome, instance, args, kwargs)
                    headers = _report_headers(execution)
            if headers is None and not adding_headers():
                return wrapped(*args, **kwargs)
            return _report(wrapped, args, kwargs, headers)

        return traced_report

    return factory


def _report_headers(execution: Execution) -> dict[str, str] | None:
    """What the state's report request carries for the state manager side: its CPU time, if measured."""
    if execution.cpu is None:
        return None
    return {CPU_TIME_HEADER: cpu_time_header(execution.cpu.seconds)}


def make_node_wrapper(telemetry: Telemetry) -> AsyncMethod:
    """Around ``BaseNode._execute``: the node's coroutine is metered for the execution's CPU time."""

    def meter_for() -> CpuMeter | None:
        execution = _current_execution.get()
        if execution is None or not telemetry.settings.cpu_time or not telemetry.enabled:
            return None
        if execution.cpu is None:
            execution.cpu = CpuMeter()
        return execution.cpu

    return metered_node_call(meter_for)


def _note_outcome(
    execution: Execution, outcome: str, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    execution.outcome = outcome
    if outcome == attr.OUTCOME_ERRORED:
        # The SDK reports errors from inside its `except` block: the exception is the one handled.
        execution.error = sys.exc_info()[1]
    elif outcome == attr.OUTCOME_REQUEUED:
        delay = getattr(instance, "delay", None)
        if delay is not None and hasattr(delay, "total_seconds"):
            execution.requeue_delay_ms = int(delay.total_seconds() * 1000)
    elif outcome == attr.OUTCOME_EXECUTED and execution.telemetry.settings.capture_io:
        outputs = call_argument(args, kwargs, 1, "outputs", None)
        if outputs is not None:
            record_outputs(execution, [o.model_dump() if hasattr(o, "model_dump") else o for o in outputs])


make_errored_wrapper = _outcome_wrapper(attr.OUTCOME_ERRORED)
make_pruned_wrapper = _outcome_wrapper(attr.OUTCOME_PRUNED)
make_requeued_wrapper = _outcome_wrapper(attr.OUTCOME_REQUEUED)
