"""`exo_otel.server.spans`: the run root, node spans and run outcome the side makes, from plain records."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from exo_otel.core.attributes import SCHEMA_URL
from exo_otel.core.ids import outcome_span_id, run_span_id, state_span_id, trace_id_for_run
from exo_otel.server.context import RunContext
from exo_otel.server.records import RunNotes, StateRecord
from exo_otel.server.spans import (
    ServerMetrics,
    emit_node_span,
    emit_run_outcome,
    emit_run_root,
    retried_state,
)

RUN_ID = "9d2c6f0e-3b1a-4c5d-8e7f-001122334455"
S = 1_000_000_000  # a second, in ns
T0 = 1_800_000_000 * S  # the trigger


def run_context(sampled: bool = True, **changes: Any) -> RunContext:
    return RunContext(RUN_ID, "ns", "greet", T0, sampled, **changes)


def record(
    state_id: str,
    identifier: str = "work",
    status: str = "SUCCESS",
    created: int = T0 + S,
    updated: int = T0 + 2 * S,
    **changes: Any,
) -> StateRecord:
    return StateRecord(state_id, RUN_ID, identifier, identifier.title(), status, created, updated, **changes)


def the_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    [span] = exporter.get_finished_spans()
    return span


@pytest.fixture
def metrics(meter_provider: MeterProvider) -> ServerMetrics:
    return ServerMetrics.create(meter_provider.get_meter("exo_otel.server", schema_url=SCHEMA_URL))


def test_the_root_is_the_runs_producer_span_from_trigger_start_to_handled(
    server_tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    caller = (0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331)
    run = run_context(caller_trace_id=caller[0], caller_span_id=caller[1])
    emit_run_root(server_tracer, run, T0 + S // 10)
    span = the_span(exporter)
    assert span.name == "run greet" and span.kind is SpanKind.PRODUCER
    assert span.context is not None and span.parent is None
    assert (span.context.trace_id, span.context.span_id) == (trace_id_for_run(RUN_ID), run_span_id(RUN_ID))
    assert (span.start_time, span.end_time) == (T0, T0 + S // 10)
    assert dict(span.attributes or {}) == {
        "exosphere.namespace": "ns", "exosphere.graph.name": "greet", "exosphere.run.id": RUN_ID,
    }
    [link] = span.links
    assert (link.context.trace_id, link.context.span_id) == caller


def test_a_root_ending_before_its_start_ends_at_it_and_an_unsampled_run_has_none(
    server_tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    emit_run_root(server_tracer, run_context(sampled=False), T0 + S)
    assert exporter.get_finished_spans() == ()
    emit_run_root(server_tracer, run_context(), T0 - S)  # a taken-over root: its end is not stored
    span = the_span(exporter)
    assert span.start_time == span.end_time == T0
    assert span.links == ()


def test_a_node_span_is_under_the_root_with_its_derived_id_timed_by_its_record(
    server_tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    state = record("s-2", parent_ids=("s-0", "s-1"), enqueue_after_ms=(T0 + S) // 1_000_000)
    emit_node_span(server_tracer, run_context(), state, {"s-2": state}, RunNotes())
    span = the_span(exporter)
    assert span.name == "node work" and span.kind is SpanKind.INTERNAL
    assert span.context is not None and span.parent is not None
    assert span.context.trace_id == trace_id_for_run(RUN_ID)
    assert span.context.span_id == state_span_id("s-2")
    assert span.parent.span_id == run_span_id(RUN_ID)
    assert (span.start_time, span.end_time) == (T0 + S, T0 + 2 * S)
    assert dict(span.attributes or {}) == {
        "exosphere.state.id": "s-2", "exosphere.node.name": "Work", "exosphere.state.outcome": "executed",
    }
    [link] = span.links  # the direct upstream state: the last parent
    assert link.context.span_id == state_span_id("s-1") and not link.attributes
    assert span.status.status_code is StatusCode.UNSET


def test_a_node_span_never_starts_before_its_run_nor_ends_before_it_starts(
    server_tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    state = record("s", created=T0 - 5 * S, updated=T0 - 6 * S)
    emit_node_span(server_tracer, run_context(), state, {}, RunNotes())
    span = the_span(exporter)
    assert span.start_time == span.end_time == T0


@pytest.mark.parametrize("status", ["ERRORED", "RETRY_CREATED", "NEXT_CREATED_ERROR"])
def test_an_errored_state_is_an_error_of_unknown_type_saying_which_failure(
    server_tracer: trace.Tracer, exporter: InMemorySpanExporter, status: str
) -> None:
    state = record("s", status=status, retry_count=2)
    emit_node_span(server_tracer, run_context(), state, {}, RunNotes())
    span = the_span(exporter)
    attributes = dict(span.attributes or {})
    assert attributes["exosphere.state.outcome"] == "errored"
    assert attributes["exosphere.state.status"] == status
    assert attributes["error.type"] == "_OTHER"
    assert attributes["exosphere.state.retry_count"] == 2
    assert span.status.status_code is StatusCode.ERROR


def test_prunes_and_requeues_are_events_at_their_times(
    server_tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    pruned = record("p", status="PRUNED")
    notes = RunNotes(requeues={"p": [(T0 + S + 5, 250), (T0 - S, 10)]})
    emit_node_span(server_tracer, run_context(), pruned, {}, notes)
    span = the_span(exporter)
    assert (span.attributes or {})["exosphere.state.outcome"] == "pruned"
    assert [(e.name, e.timestamp, dict(e.attributes or {})) for e in span.events] == [
        ("exosphere.requeued", T0 + S + 5, {"exosphere.requeue.delay_ms": 250}),
        ("exosphere.requeued", T0 + S, {"exosphere.requeue.delay_ms": 10}),  # never before the span
        ("exosphere.pruned", T0 + 2 * S, {}),
    ]
    assert span.status.status_code is StatusCode.UNSET


def test_a_fan_out_copy_is_timed_like_its_original_and_links_to_it(
    server_tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    original = record("orig", created=T0 + S, updated=T0 + 2 * S)
    copy = record("copy", created=T0 + 3 * S, updated=T0 + 9 * S, parent_ids=("up",))
    notes = RunNotes(copy_of={"copy": "orig"}, final_ns={"copy": T0 + 4 * S})
    emit_node_span(server_tracer, run_context(), copy, {"orig": original, "copy": copy}, notes)
    span = the_span(exporter)
    assert (span.start_time, span.end_time) == (T0 + S, T0 + 4 * S)
    assert (span.attributes or {})["exosphere.state.fanout_of"] == "orig"
    assert [link.context.span_id for link in span.links] == [state_span_id("up"), state_span_id("orig")]


def test_a_retry_links_to_the_state_it_retries_marked_as_such(
    server_tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    first = record("a0", retry_count=0, fanout_id="f", status="RETRY_CREATED")
    other_fanout = record("b0", retry_count=0, fanout_id="g", status="RETRY_CREATED")
    retry = record("a1", retry_count=1, fanout_id="f")
    by_id = {s.state_id: s for s in (first, other_fanout, retry)}
    assert retried_state(retry, by_id, RunNotes()) == "a0"
    assert retried_state(first, by_id, RunNotes()) is None
    manual = record("m", retry_count=0)
    assert retried_state(manual, by_id, RunNotes(retry_of={"m": "b0"})) == "b0"
    emit_node_span(server_tracer, run_context(), retry, by_id, RunNotes())
    [link] = the_span(exporter).links
    assert link.context.span_id == state_span_id("a0")
    assert dict(link.attributes or {}) == {"exosphere.link.retry_of": True}


def test_a_retry_of_a_state_not_at_hand_gets_no_link(
    server_tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    manual = record("m")
    emit_node_span(server_tracer, run_context(), manual, {"m": manual}, RunNotes(retry_of={"m": "gone"}))
    assert the_span(exporter).links == ()


@pytest.mark.parametrize(("due_after_ms", "recorded"), [(0, None), (1, 1.0), (1500, 1500.0)])
def test_a_scheduled_state_says_how_long_it_waited_for_its_time(
    server_tracer: trace.Tracer, exporter: InMemorySpanExporter, due_after_ms: int, recorded: float | None
) -> None:
    created = T0 + S  # a whole millisecond, so enqueue_after (ms) can equal it
    state = record("s", created=created, enqueue_after_ms=created // 1_000_000 + due_after_ms)
    emit_node_span(server_tracer, run_context(), state, {}, RunNotes())
    assert (the_span(exporter).attributes or {}).get("exosphere.state.schedule_wait_ms") == recorded


def test_an_unsampled_runs_node_span_is_not_recorded(
    server_tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    emit_node_span(server_tracer, run_context(sampled=False), record("s"), {}, RunNotes())
    assert exporter.get_finished_spans() == ()


def test_the_outcome_spans_the_run_with_its_status_and_counts(
    server_tracer: trace.Tracer, exporter: InMemorySpanExporter, metrics: ServerMetrics,
    points: Callable[[str], list[Any]],
) -> None:
    states = [
        record("a", updated=T0 + 3 * S),
        record("b", status="PRUNED", updated=T0 + 2 * S),
        record("c", updated=T0 + 4 * S),
    ]
    notes = RunNotes(final_ns={"copy": T0 + 5 * S}, cpu_seconds=0.75, executions=4)
    emit_run_outcome(server_tracer, metrics, run_context(), states, notes)
    span = the_span(exporter)
    assert span.name == "settle greet" and span.kind is SpanKind.INTERNAL
    assert span.context is not None and span.parent is not None
    assert span.context.span_id == outcome_span_id(RUN_ID) and span.parent.span_id == run_span_id(RUN_ID)
    assert (span.start_time, span.end_time) == (T0, T0 + 5 * S)
    assert dict(span.attributes or {}) == {
        "exosphere.namespace": "ns", "exosphere.graph.name": "greet", "exosphere.run.id": RUN_ID,
        "exosphere.run.status": "SUCCESS", "exosphere.run.states.total": 3,
        "exosphere.run.states.success": 2, "exosphere.run.states.pruned": 1,
        "exosphere.run.cpu_time": 0.75, "exosphere.run.executions": 4,
    }
    assert span.status.status_code is StatusCode.UNSET
    [duration] = points("exosphere.run.duration")
    assert duration.count == 1 and duration.sum == pytest.approx(5.0)
    assert dict(duration.attributes) == {
        "exosphere.namespace": "ns", "exosphere.graph.name": "greet", "exosphere.run.status": "SUCCESS",
    }
    # Recorded in the outcome span's context: the point's exemplar opens the run's trace.
    assert [e.trace_id for e in duration.exemplars] == [trace_id_for_run(RUN_ID)]
    [cpu] = points("exosphere.run.cpu_time")
    assert cpu.sum == pytest.approx(0.75)


def test_a_failed_run_is_an_error_and_a_run_without_reported_cpu_says_none(
    server_tracer: trace.Tracer, exporter: InMemorySpanExporter, metrics: ServerMetrics,
    points: Callable[[str], list[Any]],
) -> None:
    states = [record("a"), record("b", status="ERRORED"), record("c", status="RETRY_CREATED")]
    emit_run_outcome(server_tracer, metrics, run_context(), states, RunNotes())
    span = the_span(exporter)
    attributes = dict(span.attributes or {})
    assert attributes["exosphere.run.status"] == "FAILED"
    assert attributes["error.type"] == "_OTHER"
    assert attributes["exosphere.run.states.errored"] == attributes["exosphere.run.states.retry_created"] == 1
    assert "exosphere.run.cpu_time" not in attributes and "exosphere.run.executions" not in attributes
    assert span.status.status_code is StatusCode.ERROR
    assert points("exosphere.run.cpu_time") == []


def test_an_unsampled_run_has_no_outcome_span_but_its_duration_is_recorded(
    server_tracer: trace.Tracer, exporter: InMemorySpanExporter, metrics: ServerMetrics,
    points: Callable[[str], list[Any]],
) -> None:
    emit_run_outcome(server_tracer, metrics, run_context(sampled=False), [record("a")], RunNotes())
    assert exporter.get_finished_spans() == ()
    [duration] = points("exosphere.run.duration")
    assert duration.count == 1 and duration.sum == pytest.approx(2.0)
    assert list(duration.exemplars) == []


def test_the_side_metrics_have_their_documented_names_and_units(
    metrics: ServerMetrics, points: Callable[[str], list[Any]], reader: Any
) -> None:
    metrics.state_queue_wait.record(0.5, {"exosphere.namespace": "ns"})
    metrics.run_duration.record(1.0)
    metrics.run_cpu_time.record(0.1)
    data = reader.get_metrics_data()
    units = {m.name: m.unit for r in data.resource_metrics for sc in r.scope_metrics for m in sc.metrics}
    names = ("exosphere.state.queue_wait", "exosphere.run.duration", "exosphere.run.cpu_time")
    assert units == dict.fromkeys(names, "s")
