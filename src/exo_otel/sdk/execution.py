"""One state's execution in a runtime: the node and execute spans, baggage, the outcome and its metrics."""

from __future__ import annotations

import contextvars
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from exo_otel.core import attributes as attr
from exo_otel.core.ids import state_span_id, trace_id_for_state
from exo_otel.core.lru import LruCache
from exo_otel.core.redaction import Redactor
from exo_otel.core.sanitize import clean_str, clean_text, timestamp_or
from exo_otel.core.spans import (
    end_span,
    error_type,
    failure_description,
    record_failure,
    redact_recorded,
    start_span,
)
from exo_otel.sdk import inflight
from exo_otel.sdk.context_keys import SPAN_KEY
from exo_otel.sdk.cpu_time import CpuMeter
from exo_otel.sdk.execution_context import execution_context
from exo_otel.sdk.logs import LogFields
from exo_otel.sdk.run_traces import RunTrace, RunTraces
from exo_otel.sdk.state_context import PolledState, link_to_state
from exo_otel.sdk.telemetry import Telemetry

_OK: Final = Status(StatusCode.OK)
_UNKNOWN_FAILURE: Final = Status(StatusCode.ERROR, "state errored")
# A context with no span, for records that must carry no exemplar. Not empty: the SDK takes an empty
# context (falsy) for "none given" and uses the current one.
_NO_SPAN: Final = context.set_value(context.create_key("exo_otel.no_exemplar"), True, context.Context())
# The execute span's messaging attributes: the same for every state.
_EXECUTE_MESSAGING: Final = attr.execute_messaging()
# The metric attributes of an execution when nothing is recorded (shared, never changed).
_NOTHING_RECORDED: Final[dict[str, str]] = {}
# The attributes of a node span the server emits: none here (shared, never changed).
_SERVER_NODE_ATTRIBUTES: Final[dict[str, Any]] = {}
FINAL_OUTCOMES = frozenset(
    {attr.OUTCOME_EXECUTED, attr.OUTCOME_ERRORED, attr.OUTCOME_PRUNED, attr.OUTCOME_INTERRUPTED}
)


@dataclass(slots=True)
class Execution:
    """One attempt at one state, from the worker taking it off the queue to the task being done."""

    telemetry: Telemetry
    state: PolledState
    node_span: trace.Span
    execute_span: trace.Span
    started_ns: int
    token: contextvars.Token[context.Context] | None = None
    outcome: str | None = None
    error: BaseException | None = None
    requeue_delay_ms: int | None = None
    cpu: CpuMeter | None = None
    """The CPU time of the node's code, once the node is called (and CPU time is measured)."""
    server_node_span: bool = False
    """``node_span`` is the state manager side's (not recording here): nothing to set on it or end."""
    attributes: dict[str, Any] = field(default_factory=dict)
    """The node span's attributes at its start (cleaned; none when the server emits it); never changed."""
    metric_attributes: dict[str, str] = field(default_factory=dict)
    """Namespace, graph and node name (`metric_attributes`): shared, never changed. Empty when the meter
    is the no-op one (nothing is recorded)."""
    # The values of the secrets the node received: never written to telemetry.
    secrets: Redactor = field(default_factory=Redactor, repr=False)


def state_attributes(state: PolledState, namespace: str | None = None) -> dict[str, Any]:
    """The attributes of a state's node span at its start, cleaned (docs/trace-model.md, section
    "Attributes").

    Only what the trace does not say already: the trace id names the run, the span name the node's
    identifier, the parent the run root. ``namespace`` (cleaned) is given for a state placed in no
    run, whose node span is the only span of its trace that could say it.
    """
    state_id, node_name = state.state_id, state.node_name
    attributes: dict[str, Any] = {  # `clean_str`, inline: ASCII (nearly every id) as is
        attr.STATE_ID: state_id if state_id.isascii() else clean_text(state_id),
        attr.NODE_NAME: node_name if node_name.isascii() else clean_text(node_name),
    }
    if namespace is not None:
        attributes[attr.NAMESPACE] = namespace
    if state.retry_count:
        attributes[attr.STATE_RETRY_COUNT] = state.retry_count
    return attributes


def begin(
    telemetry: Telemetry,
    state: PolledState,
    payload: dict[str, Any],
    namespace: str,
    upstream: trace.SpanContext | None = None,
    traces: RunTraces | None = None,
    run_trace: RunTrace | None = None,
) -> Execution:
    """Start the node and execute spans of a state and make the execute span current.

    The node span starts at the state's creation (backdated: its gap before the execute span is
    the queue wait) and is ended only at the state's final outcome. With no run, the node span is
    the root of the state's own trace (trace id from the state id, shared by all its attempts).
    ``upstream`` is where the direct upstream state's node span is, when that is known; ``traces``
    holds what the runtime derived of runs already (a fresh one is made when not given); ``run_trace``
    is the state's run's, when the caller has it already.
    """
    now = time.time_ns()
    run = state.run
    if run_trace is None and run is not None:
        if traces is None:
            traces = RunTraces(namespace, telemetry.sampler)
        run_trace = traces.of(run)
    state_id = state.state_id
    identifier = state.identifier
    if not identifier.isascii():
        identifier = clean_text(identifier)
    # Before 1970 or after now is no creation time: the span starts now, with no queue wait.
    created = timestamp_or(state.created_at_ns, now)
    if run_trace is not None:
        run_attributes = run_trace.attributes
        base = run_trace.execution_base  # the run's baggage entries are in it already
        # Only the run's context: never whatever was current where the runtime started.
        parent = run_trace.node_parent
    else:
        if traces is None:
            traces = RunTraces(namespace, telemetry.sampler)
        run_attributes = traces.no_run
        base = traces.outside_any_run
        parent = context.Context()
    server_node_span = False
    if run_trace is not None and run_trace.node_spans_by_server and state_id:
        # The server emits the node span: execute spans go under its deterministic id. Nothing of
        # this state is started here but the execute span, which needs its state id and node name.
        server_node_span = True
        attributes: dict[str, Any] = _SERVER_NODE_ATTRIBUTES
        clean_state_id, node_name = clean_str(state_id), clean_str(state.node_name)
        node_span: trace.Span = trace.NonRecordingSpan(run_trace.state_context(state_id))
    else:
        namespace_attribute = None if run_trace is not None else run_attributes[attr.NAMESPACE]
        attributes = state_attributes(state, namespace_attribute)
        clean_state_id, node_name = attributes[attr.STATE_ID], attributes[attr.NODE_NAME]
        node_span = start_span(
            telemetry.tracer,
            f"node {identifier}",
            context=parent,
            trace_id=trace_id_for_state(state_id) if run is None and state_id else None,
            span_id=state_span_id(state_id) if state_id else None,
            start_time=created,
            attributes=attributes,
            links=link_to_state(upstream),
            cleaned=True,
        )
    queue_wait_ns = max(0, now - created)
    # Nothing its name (the node name) and its parent (the node span: state, run) say already, and no
    # runtime name (the resource names the process): a state's spans stay under 500 bytes of OTLP.
    execute_attributes: dict[str, Any] = {attr.STATE_QUEUE_WAIT_MS: queue_wait_ns / 1e6, **_EXECUTE_MESSAGING}
    if telemetry.settings.capture_io:
        execute_attributes[attr.NODE_INPUTS] = clean_text(_truncated(payload.get("inputs"), telemetry))
    execute_span = start_span(
        telemetry.tracer,
        f"execute {node_name}",
        context=(
            trace.set_span_in_context(node_span, parent)
            if SPAN_KEY is None
            else context.Context({**parent, SPAN_KEY: node_span})
        ),
        kind=SpanKind.CONSUMER,
        attributes=execute_attributes,
        start_time=now,
        cleaned=True,
    )
    secrets = Redactor()
    log_fields = (
        LogFields(execute_span, run_trace.run_id_for_logs, secrets, run_trace.log_trace)
        if run_trace is not None
        else LogFields(execute_span, "", secrets)
    )
    entries = {attr.NODE_IDENTIFIER: identifier, attr.STATE_ID: clean_state_id}
    current = execution_context(base, execute_span, entries, log_fields)
    recording = telemetry.metrics.recording
    # From the run's attributes, not the spans': the spans no longer carry namespace and graph.
    state_metric_attributes = metric_attributes(run_attributes, node_name) if recording else _NOTHING_RECORDED
    execution = Execution(
        telemetry, state, node_span, execute_span, now,
        server_node_span=server_node_span, attributes=attributes, metric_attributes=state_metric_attributes,
        secrets=secrets,
    )
    if recording:
        # In the execute span's context, so a sampled run gives the histogram an exemplar.
        telemetry.metrics.queue_wait.record(queue_wait_ns / 1e9, state_metric_attributes, context=current)
    inflight.add(execution)
    # Last: nothing after it can fail, so the context is detached by `finish` whatever happens.
    execution.token = context.attach(current)
    return execution


_RUN_METRIC_KEYS: Final = (attr.NAMESPACE, attr.GRAPH_NAME)
# Few distinct sets (namespaces x graphs x nodes x outcomes): one dict each, shared by all states.
_metric_attribute_sets: LruCache[tuple[Any, ...], dict[str, str]] = LruCache(4096)


def metric_attributes(
    run_attributes: Mapping[str, Any],
    node_name: str,
    outcome: str | None = None,
    failure: str | None = None,
) -> dict[str, str]:
    """The metric attributes of a state (namespace, graph, node name; never ids: docs/trace-model.md,
    section "Metrics"), and its outcome and ``error.type`` when given. The namespace and graph are
    taken from ``run_attributes`` (the run's cleaned attributes, or a set this returned). The same
    dict for the same values: callers must not change it."""
    get = run_attributes.get
    key = (get(attr.NAMESPACE), get(attr.GRAPH_NAME), node_name, outcome, failure)
    found = _metric_attribute_sets.get(key)
    if found is None:
        found = {k: run_attributes[k] for k in _RUN_METRIC_KEYS if k in run_attributes}
        found[attr.NODE_NAME] = node_name
        if outcome is not None:
            found[attr.STATE_OUTCOME] = outcome
        else:
            inflight.note_attribute_set(found)
        if failure is not None:
            found[attr.ERROR_TYPE] = clean_text(failure)
        _metric_attribute_sets.put(key, found)
    return found


def record_outputs(execution: Execution, outputs: object) -> None:
    """Record node outputs on the execute span, when the user opted in."""
    if execution.telemetry.settings.capture_io and execution.execute_span.is_recording():
        execution.execute_span.set_attribute(
            attr.NODE_OUTPUTS, clean_text(_truncated(outputs, execution.telemetry))
        )


def finish(execution: Execution) -> None:
    """End the attempt and detach its context (in the worker task that attached it)."""
    try:
        end_once(execution)
    finally:
        if execution.token is not None:
            context.detach(execution.token)


def end_once(execution: Execution, interrupted_by: BaseException | None = None) -> None:
    """Outcome on both spans, metrics, and the node span if the outcome is final; once only.

    Safe from any thread and from a signal handler: whichever comes first ends the spans. With
    ``interrupted_by``, a state that reported no outcome yet ends ``interrupted`` (ERROR, that
    exception's type); one that did keeps it (the state manager may know it already).
    """
    if not inflight.claim(execution):
        return
    if interrupted_by is not None and execution.outcome is None:
        execution.outcome = attr.OUTCOME_INTERRUPTED
        execution.error = interrupted_by
    _end_spans(execution)


def interrupt(execution: Execution, cause: BaseException) -> None:
    """End an execution stopped by ``cause`` (cancellation, a BaseException, a signal)."""
    end_once(execution, interrupted_by=cause)


def _end_spans(execution: Execution) -> None:
    end = time.time_ns()
    outcome = execution.outcome or attr.OUTCOME_ERRORED
    execute_span, node_span = execution.execute_span, execution.node_span
    secrets = execution.secrets
    if not execution.server_node_span:
        node_span.set_attribute(attr.STATE_OUTCOME, outcome)
    if outcome != attr.OUTCOME_EXECUTED:
        # An attempt that executed says so by its OK status (and its node span's outcome): the
        # attribute is left off the commonest span of a run (docs/trace-model.md, section "Size").
        execute_span.set_attribute(attr.STATE_OUTCOME, outcome)
    if secrets.values:
        # Started before the secrets were known: a payload value may equal one of them.
        for span in (execute_span, node_span):
            redact_recorded(span, secrets)
    if outcome == attr.OUTCOME_EXECUTED:
        execute_span.set_status(_OK)
    elif outcome == attr.OUTCOME_PRUNED:
        execute_span.add_event(attr.EVENT_PRUNED)
    elif outcome == attr.OUTCOME_REQUEUED:
        delay = (
            {}
            if execution.requeue_delay_ms is None
            else {attr.EVENT_REQUEUE_DELAY_MS: execution.requeue_delay_ms}
        )
        execute_span.add_event(attr.EVENT_REQUEUED, delay)
    elif execution.error is not None:
        record_failure(execute_span, execution.error, execution.secrets)
        node_span.set_attribute(attr.ERROR_TYPE, error_type(execution.error))
        description = failure_description(execution.error, execution.secrets)
        node_span.set_status(Status(StatusCode.ERROR, description))
    else:  # errored, or no outcome reported at all: the exception is unknown
        for span in (execute_span, node_span):
            span.set_attribute(attr.ERROR_TYPE, attr.ERROR_TYPE_OTHER)
            span.set_status(_UNKNOWN_FAILURE)
    metrics = execution.telemetry.metrics
    cpu_seconds = None
    if execution.cpu is not None:
        cpu_seconds = execution.cpu.seconds
        execute_span.set_attribute(attr.EXECUTION_CPU_TIME, cpu_seconds)
    if metrics.recording:
        base = execution.metric_attributes
        node_name = base.get(attr.NODE_NAME, "")
        outcome_attributes = metric_attributes(base, node_name, outcome)
        duration_attributes = outcome_attributes
        if outcome in (attr.OUTCOME_ERRORED, attr.OUTCOME_INTERRUPTED):
            # error.type on the duration of failed executions (docs/trace-model.md, section "Metrics").
            failure = error_type(execution.error) if execution.error is not None else attr.ERROR_TYPE_OTHER
            duration_attributes = metric_attributes(base, node_name, outcome, failure)
        # Recorded while the execute span is current, so sampled runs give the histogram exemplars.
        metrics.node_duration.record((end - execution.started_ns) / 1e9, duration_attributes)
        if cpu_seconds is not None:
            metrics.node_cpu_time.record(cpu_seconds, outcome_attributes)
        # Exemplars are for histograms (docs/trace-model.md, section "Metrics"): the counter gets none.
        metrics.executions.add(1, outcome_attributes, context=_NO_SPAN)
    end_span(execute_span, end)
    if outcome in FINAL_OUTCOMES and not execution.server_node_span:
        end_span(node_span, end)
    # A requeued state's node span is left unended, so never exported: the runtime that reports
    # the state's final outcome emits it, and no span id is emitted twice.


def _truncated(value: object, telemetry: Telemetry) -> str:
    try:
        text = json.dumps(value, default=str, sort_keys=True)
    except (TypeError, ValueError):
        text = repr(value)
    limit = telemetry.settings.io_max_length
    return text if len(text) <= limit else text[:limit] + "..."
