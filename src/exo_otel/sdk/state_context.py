"""What a runtime knows of one polled state: its run, its direct upstream state, and the trace context."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Final

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.trace.sampling import Decision, Sampler
from opentelemetry.trace import Link, SpanContext, SpanKind

from exo_otel.core.ids import run_root_span_context, trace_id_for_run

# The W3C fields of the run's carrier in an enqueued state, and the marker that the server emits
# node spans (docs/trace-model.md, section "The carrier").
CARRIER_FIELDS = ("traceparent", "tracestate", "baggage")
_ABSENT: Final = object()


@dataclass(slots=True)
class RunInfo:
    """The run a state belongs to, as far as it is known (a value: never changed once made).

    ``carrier`` holds the run's W3C fields when the state manager side sent them;
    ``node_spans_by_server`` is true when it also emits the state's node span.
    """

    run_id: str
    graph_name: str | None = None
    parent_state_id: str | None = None
    carrier: tuple[tuple[str, str], ...] = ()
    node_spans_by_server: bool = False


@dataclass(slots=True)
class PolledState:
    """A state as the enqueue answer gave it, with its run when one was found (a value: never changed
    once made; `dataclasses.replace` makes another). Not frozen: one is made per state, on the hot path."""

    state_id: str
    node_name: str
    identifier: str
    created_at_ns: int | None
    run: RunInfo | None
    retry_count: int | None = None
    run_from_payload: bool = False
    """The run came with the state (the server's extension), so every runtime places its states alike."""
    node_spans_by_server: bool = False
    """The server emits the state's node span (its run's ``node_spans_by_server``), copies' included."""

    @classmethod
    def from_payload(
        cls, state: dict[str, Any], run: RunInfo | None, run_from_payload: bool = False
    ) -> PolledState:
        get = state.get
        retry = get("retry_count")
        # Positional (by keywords a class call costs ~4k instructions more, once per state), in the
        # fields' order: tests/unit/test_unit_sdk_runtime.py checks that order.
        return cls(
            str(get("state_id", "")),  # state_id
            str(get("node_name", "")),  # node_name
            str(get("identifier", "")),  # identifier
            parse_timestamp_ns(get("created_at")),  # created_at_ns
            run,
            retry if type(retry) is int and retry >= 0 else _retry_count(retry),  # retry_count
            run_from_payload and run is not None,  # run_from_payload
            run is not None and run.node_spans_by_server,  # node_spans_by_server
        )


def _retry_count(value: object) -> int | None:
    """The payload's ``retry_count`` (sent with the run context), when it is a count."""
    if value is None:
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def has_payload_run(state: dict[str, Any]) -> bool:
    """Whether the state carries its run (`run_from_payload` gives a run for it)."""
    run_id = state.get("run_id")
    return isinstance(run_id, str) and bool(run_id)


def run_from_payload(state: dict[str, Any]) -> RunInfo | None:
    """The run context the proposed enqueue extension carries (``run_id``, ``graph_name``, ``parents``)."""
    get = state.get
    run_id = get("run_id")
    if not isinstance(run_id, str) or not run_id:  # `has_payload_run`, inline
        return None
    graph_name = get("graph_name")
    parents = get("parents")
    parent = None
    if isinstance(parents, dict) and parents:
        # Parents are in insertion order: the last entry is the direct parent.
        parent = str(next(reversed(parents.values())))
    traceparent = get("traceparent", _ABSENT)
    if traceparent is _ABSENT:  # without it there is no run root to extract, whatever else is sent
        return RunInfo(run_id, graph_name if isinstance(graph_name, str) else None, parent)
    tracestate, entries = get("tracestate"), get("baggage")
    if type(traceparent) is str and traceparent and tracestate is None and entries is None:
        carrier: tuple[tuple[str, str], ...] = (("traceparent", traceparent),)  # the commonest carrier
    else:
        values = (traceparent, tracestate, entries)
        carrier = tuple(
            [(key, value) for key, value in zip(CARRIER_FIELDS, values, strict=True)
             if isinstance(value, str) and value]
        )
    return RunInfo(
        run_id,
        graph_name if isinstance(graph_name, str) else None,
        parent,
        carrier,
        bool(carrier) and get("node_spans") == "server",
    )


class _CarrierGetter(Getter[dict[str, str]]):
    """Reads a carrier of plain string values (`RunInfo.carrier`): no per-value type checks."""

    def get(self, carrier: dict[str, str], key: str) -> list[str] | None:
        value = carrier.get(key)
        return None if value is None else [value]

    def keys(self, carrier: dict[str, str]) -> list[str]:
        return list(carrier)


_CARRIER_GETTER: Final = _CarrierGetter()


def carried_context(run: RunInfo, trace_id: int | None = None) -> Context | None:
    """The run root's context from the state's carrier (configured propagators: sampled flag, baggage).

    None when there is no carrier or its trace is not the run's: the run is then placed from its id.
    Extracted into an empty context, so nothing current in the runtime leaks into the run.
    ``trace_id`` is the run's, when the caller has it already.
    """
    if not run.carrier:
        return None
    extracted = propagate.extract(dict(run.carrier), context=Context(), getter=_CARRIER_GETTER)
    root = trace.get_current_span(extracted).get_span_context()
    expected = trace_id if trace_id is not None else trace_id_for_run(run.run_id)
    if not root.is_valid or root.trace_id != expected:
        return None
    return extracted


_EPOCH: Final = dt.datetime(1970, 1, 1)
_EPOCH_UTC: Final = _EPOCH.replace(tzinfo=dt.UTC)
_MICROSECOND: Final = dt.timedelta(microseconds=1)


def parse_timestamp_ns(value: object) -> int | None:
    """Epoch nanoseconds of an ISO 8601 timestamp (naive means UTC, as the state manager writes it).

    Exact (the timedelta since the epoch in whole microseconds, no float seconds): one call per state.
    """
    if not isinstance(value, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(value)  # "Z" included (Python >= 3.11)
    except ValueError:
        return None
    since = moment - (_EPOCH if moment.tzinfo is None else _EPOCH_UTC)
    return since // _MICROSECOND * 1_000  # whole microseconds: an exact integer division


def run_is_sampled(sampler: Sampler | None, run: RunInfo, trace_id: int | None = None) -> bool:
    """What the trigger side decided: the sampler's decision for the run's root span.

    Exact for samplers that decide on the trace id alone (always on/off, ratio, parent-based forms).
    Asked with an empty parent context: the root has no parent, whatever is current here.
    ``trace_id`` is the run's, when the caller has it already.
    """
    if sampler is None:
        return True
    result = sampler.should_sample(
        Context(),
        trace_id if trace_id is not None else trace_id_for_run(run.run_id),
        f"trigger {run.graph_name or ''}".rstrip(),
        SpanKind.PRODUCER,
    )
    return result.decision is Decision.RECORD_AND_SAMPLE


def run_root_context(run: RunInfo, sampled: bool) -> SpanContext:
    """The remote span context of the run's root, derived from the run id alone."""
    return run_root_span_context(run.run_id, sampled)


def link_to_state(context: SpanContext | None) -> list[Link]:
    """A link to a state's node span at ``context``; none when where that span is is not known.

    No attributes: the span linked to carries its state id.
    """
    if context is None or not context.is_valid:
        return []
    if not context.is_remote:
        context = SpanContext(context.trace_id, context.span_id, True, context.trace_flags)
    return [Link(context)]


def parent_context(root: SpanContext) -> Context:
    """A context whose current span is the (remote) run root."""
    return trace.set_span_in_context(trace.NonRecordingSpan(root), Context())
