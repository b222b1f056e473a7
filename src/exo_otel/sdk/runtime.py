"""The runtime side: each state a `Runtime` polls carries its run's context through the worker queue."""

from __future__ import annotations

import asyncio
import contextvars
import sys
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.instrumentation.utils import is_instrumentation_enabled, suppress_http_instrumentation

from exo_otel.core import attributes as attr
from exo_otel.core.spans import guard
from exo_otel.core.wrapping import AsyncMethod, call_argument
from exo_otel.sdk.execution import Execution, begin, finish, record_outputs
from exo_otel.sdk.fanout import emit_copy_spans, fanout_copy_ids
from exo_otel.sdk.run_lookup import RunLookup
from exo_otel.sdk.state_context import PolledState, RunInfo, run_from_payload
from exo_otel.sdk.telemetry import Telemetry

TRACING_ATTRIBUTE = "_exo_otel_tracing"

# The execution the current worker task is in: set when a worker takes a state off the queue,
# read by the notification wrappers, cleared when the worker marks the task done.
_current_execution: contextvars.ContextVar[Execution | None] = contextvars.ContextVar(
    "exo_otel_execution", default=None
)


class RuntimeTracing:
    """Per-runtime bookkeeping: the states polled and not yet taken by a worker, with their runs."""

    def __init__(self, telemetry: Telemetry, runtime: Any) -> None:
        self.telemetry = telemetry
        self.runtime = runtime
        self.polled: dict[str, PolledState] = {}
        self._lookup: RunLookup | None = None

    @property
    def namespace(self) -> str:
        return str(getattr(self.runtime, "_namespace", ""))

    @property
    def name(self) -> str:
        return str(getattr(self.runtime, "_name", ""))

    async def on_polled(self, answer: Any) -> None:
        """Find the run of every state in an enqueue answer and remember it until a worker takes it."""
        states = answer.get("states") if isinstance(answer, dict) else None
        if not isinstance(states, list):
            return
        settings = self.telemetry.settings
        polled = [s for s in states if isinstance(s, dict) and isinstance(s.get("state_id"), str)]
        runs: dict[str, RunInfo] = {}
        if settings.run_association.uses_payload:
            runs = {s["state_id"]: run for s in polled if (run := run_from_payload(s)) is not None}
        unknown = [s["state_id"] for s in polled if s["state_id"] not in runs]
        if unknown and settings.run_association.uses_run_api:
            runs.update(await self.lookup().resolve(unknown))
        for state in polled:
            self.polled[state["state_id"]] = PolledState.from_payload(state, runs.get(state["state_id"]))

    def lookup(self) -> RunLookup:
        """The run API client, made on first use (the runtime's settings are final by then)."""
        if self._lookup is None:
            runtime = self.runtime
            self._lookup = RunLookup(
                str(runtime._state_manager_uri),
                self.namespace,
                str(runtime._key),
                version=str(runtime._state_manager_version),
            )
        return self._lookup

    def on_taken(self, state: Any) -> None:
        """A worker took ``state`` off the queue: start its spans and make them current."""
        if not isinstance(state, dict) or not self.telemetry.enabled or not is_instrumentation_enabled():
            return
        polled = self.polled.pop(str(state.get("state_id")), None) or PolledState.from_payload(state, None)
        execution = begin(self.telemetry, polled, state, self.namespace, self.name)
        _current_execution.set(execution)


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
        with guard("starting a state's spans"):
            self.tracing.on_taken(state)
        return state

    def task_done(self) -> None:
        execution = _current_execution.get()
        if execution is not None:
            _current_execution.set(None)
            with guard("ending a state's spans"):
                finish(execution)
        super().task_done()


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


def make_poll_wrapper(telemetry: Telemetry) -> AsyncMethod:
    """Around ``Runtime._enqueue_call``: no spans (not even HTTP ones), a poll duration, run lookup."""

    async def traced_poll(
        wrapped: AsyncMethod, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        tracing = getattr(instance, TRACING_ATTRIBUTE, None)
        if not is_instrumentation_enabled() or not isinstance(tracing, RuntimeTracing):
            return await wrapped(*args, **kwargs)
        started = time.perf_counter()
        # Polling runs every poll_interval: its HTTP spans would bury the runs.
        with suppress_http_instrumentation():
            answer = await wrapped(*args, **kwargs)
            with guard("recording a poll"):
                telemetry.metrics.poll_duration.record(
                    time.perf_counter() - started, {attr.NAMESPACE: tracing.namespace}
                )
                await tracing.on_polled(answer)
        return answer

    return traced_poll


def make_executed_wrapper(telemetry: Telemetry) -> AsyncMethod:
    """Around ``Runtime._notify_executed``: note the outcome; after a fan-out, give its copies spans."""
    note = _outcome_wrapper(attr.OUTCOME_EXECUTED)(telemetry)

    async def traced_executed(
        wrapped: AsyncMethod, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        result = await note(wrapped, instance, args, kwargs)
        execution = _current_execution.get()
        tracing = getattr(instance, TRACING_ATTRIBUTE, None)
        outputs = call_argument(args, kwargs, 1, "outputs", None)
        if (
            execution is not None
            and execution.state.run is not None
            and not execution.state.run.node_spans_by_server  # the server emits the copies' spans
            and isinstance(tracing, RuntimeTracing)
            and isinstance(outputs, list)
            and len(outputs) > 1
        ):
            with guard("tracing fan-out copies"):
                # The executed answer does not name the copies; the run graph does (one call).
                graph = await tracing.lookup().run_graph(execution.state.run.run_id)
                emit_copy_spans(
                    execution, fanout_copy_ids(graph, execution.state.state_id, execution.state.identifier)
                )
        return result

    return traced_executed


def _outcome_wrapper(outcome: str) -> Callable[[Telemetry], AsyncMethod]:
    """Wrap a call that tells the state manager a state's outcome: remember it on the execution."""

    def factory(telemetry: Telemetry) -> AsyncMethod:
        async def traced_report(
            wrapped: AsyncMethod, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> Any:
            execution = _current_execution.get()
            if execution is not None:
                with guard(f"noting outcome {outcome}"):
                    _note_outcome(execution, outcome, instance, args, kwargs)
            return await wrapped(*args, **kwargs)

        return traced_report

    return factory


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
    elif outcome == attr.OUTCOME_EXECUTED:
        outputs = call_argument(args, kwargs, 1, "outputs", None)
        if outputs is not None and execution.telemetry.settings.capture_io:
            record_outputs(execution, [o.model_dump() if hasattr(o, "model_dump") else o for o in outputs])


make_errored_wrapper = _outcome_wrapper(attr.OUTCOME_ERRORED)
make_pruned_wrapper = _outcome_wrapper(attr.OUTCOME_PRUNED)
make_requeued_wrapper = _outcome_wrapper(attr.OUTCOME_REQUEUED)
