"""The state manager side's spans: the run's root ``run {graph_name}``, each state's ``node {identifier}``
and the run's outcome ``settle {graph_name}``.

The root is made when the trigger is handled, so a run is visible from its first second; node spans
and the outcome once what they describe is over (their start is backdated). All with the decision
the server's sampler made when the run started (`exo_otel.server.sampling`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.metrics import Histogram, Meter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from exo_otel.core import attributes as attr
from exo_otel.core.ids import (
    outcome_span_id,
    remote_span_context,
    run_span_id,
    state_span_id,
    trace_id_for_run,
)
from exo_otel.core.metrics import CPU_TIME_BUCKETS, RUN_CPU_TIME, RUN_DURATION, STATE_QUEUE_WAIT
from exo_otel.core.spans import end_span, start_span
from exo_otel.server.context import RunContext, outcome_name, root_name
from exo_otel.server.records import OUTCOME_BY_STATUS, RunNotes, StateRecord, run_outcome
from exo_otel.server.sampling import stored_decision

_MIN_SCHEDULE_WAIT_NS: Final = 1_000_000
_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)


@dataclass(frozen=True)
class ServerMetrics:
    """The state manager side's instruments."""

    run_duration: Histogram
    state_queue_wait: Histogram
    run_cpu_time: Histogram

    @classmethod
    def create(cls, meter: Meter) -> ServerMetrics:
        return cls(
            run_duration=meter.create_histogram(
                RUN_DURATION,
                unit="s",
                description="Duration of a graph run, trigger to settled, by outcome.",
                explicit_bucket_boundaries_advisory=_BUCKETS,
            ),
            state_queue_wait=meter.create_histogram(
                STATE_QUEUE_WAIT,
                unit="s",
                description="Time from a state's creation to a runtime taking it.",
                explicit_bucket_boundaries_advisory=_BUCKETS,
            ),
            run_cpu_time=meter.create_histogram(
                RUN_CPU_TIME,
                unit="s",
                description="CPU time a graph run's node code used, summed over every reported "
                "execution attempt in every runtime, by outcome.",
                explicit_bucket_boundaries_advisory=CPU_TIME_BUCKETS,
            ),
        )


def _state_link(run: RunContext, state_id: str, **marker: Any) -> Link:
    # No state id on the link: the span it names carries it (spans sized for big runs).
    context = remote_span_context(trace_id_for_run(run.run_id), state_span_id(state_id), run.sampled)
    return Link(context, marker or None)


def retried_state(state: StateRecord, by_id: Mapping[str, StateRecord], notes: RunNotes) -> str | None:
    """The state ``state`` retries: noted for manual retries, else its fan-out's previous attempt."""
    if state.state_id in notes.retry_of:
        return notes.retry_of[state.state_id]
    if state.retry_count <= 0:
        return None
    for other in by_id.values():
        if (
            other.identifier == state.identifier
            and other.fanout_id == state.fanout_id
            and other.retry_count == state.retry_count - 1
        ):
            return other.state_id
    return None


def emit_node_span(
    tracer: trace.Tracer,
    run: RunContext,
    state: StateRecord,
    by_id: Mapping[str, StateRecord],
    notes: RunNotes,
) -> None:
    """The state's node span: child of the run root, links to its upstream state, its original, or the
    state it retries (each a state of the run, so its span is emitted too). ``by_id`` holds at least
    the state's original and previous attempt when it has them."""
    original_id = notes.copy_of.get(state.state_id)
    original = by_id.get(original_id) if original_id else None
    start = (original or state).created_ns
    start = max(start, run.start_ns)
    end = notes.final_ns.get(state.state_id) if original is not None else None
    end = max(end or state.updated_ns, start)
    outcome = OUTCOME_BY_STATUS.get(state.status, state.status.lower())
    # What the trace says already is not repeated: the run (trace id), its namespace and graph (the
    # root), the identifier (the span's name). See docs/trace-model.md, section "Attributes".
    attributes: dict[str, Any] = {
        attr.STATE_ID: state.state_id,
        attr.NODE_NAME: state.node_name,
        attr.STATE_OUTCOME: outcome,
    }
    if state.retry_count:
        attributes[attr.STATE_RETRY_COUNT] = state.retry_count
    if outcome == attr.OUTCOME_ERRORED:
        # Which failure: ERRORED, RETRY_CREATED or NEXT_CREATED_ERROR.
        attributes[attr.STATE_STATUS] = state.status
    links: list[Link] = []
    if state.parent_ids:  # always of the same run, whose every settled state the sweep emits
        links.append(_state_link(run, state.parent_ids[-1]))
    if original is not None:
        attributes[attr.STATE_FANOUT_OF] = original.state_id
        links.append(_state_link(run, original.state_id))
    retried = retried_state(state, by_id, notes)
    if retried is not None and retried in by_id:
        links.append(_state_link(run, retried, **{attr.LINK_RETRY_OF: True}))
    due_ns = (state.enqueue_after_ms or 0) * 1_000_000
    # Upstream stamps a new state's enqueue_after (in ms, truncated) just after its created_at: a
    # difference under a millisecond is that, not a wait.
    if due_ns - state.created_ns >= _MIN_SCHEDULE_WAIT_NS:
        attributes[attr.STATE_SCHEDULE_WAIT_MS] = (due_ns - state.created_ns) / 1e6
    parent = trace.set_span_in_context(trace.NonRecordingSpan(run.root_span_context()), Context())
    with stored_decision(run.sampled):
        span = start_span(
            tracer,
            f"node {state.identifier}",
            context=parent,
            span_id=state_span_id(state.state_id),
            start_time=start,
            attributes=attributes,
            links=links,
        )
    for when, delay_ms in notes.requeues.get(state.state_id, []):
        span.add_event(
            attr.EVENT_REQUEUED, {attr.EVENT_REQUEUE_DELAY_MS: delay_ms}, timestamp=max(when, start)
        )
    if outcome == attr.OUTCOME_PRUNED:
        span.add_event(attr.EVENT_PRUNED, timestamp=end)
    if outcome == attr.OUTCOME_ERRORED:
        span.set_attribute(attr.ERROR_TYPE, attr.ERROR_TYPE_OTHER)
        span.set_status(Status(StatusCode.ERROR, f"state {state.status}"))
    end_span(span, end)


def _run_attributes(run: RunContext) -> dict[str, Any]:
    return {attr.NAMESPACE: run.namespace, attr.GRAPH_NAME: run.graph_name, attr.RUN_ID: run.run_id}


def emit_run_root(tracer: trace.Tracer, run: RunContext, end_ns: int) -> None:
    """The run's root, ``run {graph_name}`` (PRODUCER: the run's states are the messages it sends to
    the node queues): from the trigger's start to the trigger handled, exported at once, so every
    span of the run has its parent from the run's first second. Links to the caller's span."""
    if not run.sampled:
        return
    links = []
    if run.caller_trace_id and run.caller_span_id:
        links.append(Link(remote_span_context(run.caller_trace_id, run.caller_span_id, True)))
    with stored_decision(True):
        span = start_span(
            tracer,
            root_name(run.graph_name),
            kind=SpanKind.PRODUCER,
            context=Context(),
            trace_id=trace_id_for_run(run.run_id),
            span_id=run_span_id(run.run_id),
            start_time=run.start_ns,
            attributes=_run_attributes(run),
            links=links,
        )
    end_span(span, max(end_ns, run.start_ns))


def emit_run_outcome(
    tracer: trace.Tracer,
    metrics: ServerMetrics | None,
    run: RunContext,
    states: list[StateRecord],
    notes: RunNotes,
) -> None:
    """The run's outcome, ``settle {graph_name}``, under the root: from the trigger to the moment the
    run settled (the last state's end, as its node span ends: its duration is the run's), with the
    run's status, its states by final status and, when runtimes reported them, the CPU time of its
    execution attempts and their number. Its metrics are recorded in its context (exemplars)."""
    status, counts = run_outcome(states)
    end = max(run.start_ns, *(s.updated_ns for s in states), *notes.final_ns.values())
    span: trace.Span = trace.INVALID_SPAN
    if run.sampled:
        attributes: dict[str, Any] = {
            **_run_attributes(run),
            attr.RUN_STATUS: status,
            attr.RUN_STATES_PREFIX + "total": len(states),
        }
        for name, count in counts.items():
            attributes[attr.RUN_STATES_PREFIX + name.lower()] = count
        if notes.executions:
            attributes[attr.RUN_CPU_TIME] = notes.cpu_seconds
            attributes[attr.RUN_EXECUTIONS] = notes.executions
        parent = trace.set_span_in_context(trace.NonRecordingSpan(run.root_span_context()), Context())
        with stored_decision(True):
            span = start_span(
                tracer,
                outcome_name(run.graph_name),
                context=parent,
                span_id=outcome_span_id(run.run_id),
                start_time=run.start_ns,
                attributes=attributes,
            )
        if status == "FAILED":
            span.set_attribute(attr.ERROR_TYPE, attr.ERROR_TYPE_OTHER)
            span.set_status(Status(StatusCode.ERROR, "run failed"))
    if metrics is not None:
        # In the outcome span's context, so a sampled run's points keep an exemplar naming its trace.
        where = trace.set_span_in_context(span, Context())
        metric_attributes = {
            attr.NAMESPACE: run.namespace, attr.GRAPH_NAME: run.graph_name, attr.RUN_STATUS: status
        }
        metrics.run_duration.record((end - run.start_ns) / 1e9, metric_attributes, context=where)
        if notes.executions:
            metrics.run_cpu_time.record(notes.cpu_seconds, metric_attributes, context=where)
    if run.sampled:
        end_span(span, end)
