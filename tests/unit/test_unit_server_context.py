"""`exo_otel.server.context`: a run's context on the state manager side, its stored form, its carrier."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry import baggage, trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from exo_otel.core.ids import run_span_id, trace_id_for_run
from exo_otel.server.context import (
    RunContext,
    enqueue_extension,
    new_run_context,
    outcome_name,
    root_name,
)

RUN_ID = "9d2c6f0e-3b1a-4c5d-8e7f-001122334455"
CALLER_TRACE = 0x0AF7651916CD43DD8448EB211C80319C
CALLER_SPAN = 0xB7AD6B7169203331


class _Recording(Sampler):
    """A sampler that says yes and remembers what it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[Any, ...]] = []

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        self.asked.append((parent_context, trace_id, name, kind, dict(attributes or {})))
        return SamplingResult(Decision.RECORD_AND_SAMPLE)

    def get_description(self) -> str:
        return "recording"


def test_span_names_say_the_graph_and_lose_the_space_without_one() -> None:
    assert (root_name("greet"), outcome_name("greet")) == ("run greet", "settle greet")
    assert (root_name(""), outcome_name("")) == ("run", "settle")


def test_the_sampler_is_asked_once_for_the_runs_root() -> None:
    sampler = _Recording()
    run = new_run_context(RUN_ID, "ns", "greet", 123, sampler)
    assert sampler.asked == [(
        None, trace_id_for_run(RUN_ID), "run greet", SpanKind.PRODUCER,
        {"exosphere.namespace": "ns", "exosphere.graph.name": "greet", "exosphere.run.id": RUN_ID},
    )]
    assert run == RunContext(RUN_ID, "ns", "greet", 123, True)


def test_the_decision_is_the_samplers_and_no_sampler_samples() -> None:
    assert new_run_context(RUN_ID, "ns", "g", 1, ALWAYS_OFF).sampled is False
    assert new_run_context(RUN_ID, "ns", "g", 1, ALWAYS_ON).sampled is True
    assert new_run_context(RUN_ID, "ns", "g", 1, None).sampled is True
    ratio = TraceIdRatioBased(0.5)
    expected = ratio.should_sample(None, trace_id_for_run(RUN_ID), "x").decision is Decision.RECORD_AND_SAMPLE
    assert new_run_context(RUN_ID, "ns", "g", 1, ratio).sampled is expected


@pytest.mark.parametrize(("flags", "linked"), [("01", True), ("00", False)])
def test_the_callers_baggage_is_kept_and_its_span_only_when_sampled(flags: str, linked: bool) -> None:
    headers = {
        "traceparent": f"00-{CALLER_TRACE:032x}-{CALLER_SPAN:016x}-{flags}",
        "baggage": "tenant=acme,plan=gold",
        "x-unrelated": "1",
    }
    run = new_run_context(RUN_ID, "ns", "g", 1, None, headers)
    assert run.baggage == {"tenant": "acme", "plan": "gold"}
    caller = (run.caller_trace_id, run.caller_span_id)
    assert caller == ((CALLER_TRACE, CALLER_SPAN) if linked else (None, None))


def test_garbage_headers_give_no_baggage_and_no_caller() -> None:
    run = new_run_context(RUN_ID, "ns", "g", 1, None, {"traceparent": "nonsense", "baggage": "=;="})
    assert (run.baggage, run.caller_trace_id, run.caller_span_id) == ({}, None, None)


def test_a_context_survives_its_stored_form() -> None:
    run = RunContext(
        RUN_ID, "ns", "g", 42, False, {"tenant": "acme"}, CALLER_TRACE, CALLER_SPAN, emit_from_ns=7
    )
    document = run.to_document()
    assert document == {
        "run_id": RUN_ID, "namespace": "ns", "graph_name": "g", "start_ns": 42, "sampled": False,
        "baggage": {"tenant": "acme"}, "caller": [f"{CALLER_TRACE:032x}", f"{CALLER_SPAN:016x}"],
        "emit_from_ns": 7,
    }
    assert RunContext.from_document(document) == run
    plain = RunContext(RUN_ID, "ns", "g", 42, True)
    assert plain.to_document()["caller"] is None
    assert RunContext.from_document(plain.to_document()) == plain


def test_a_sparse_or_odd_document_reads_with_defaults() -> None:
    before = time.time_ns()
    run = RunContext.from_document({"run_id": RUN_ID, "baggage": ["not", "a", "map"], "caller": ["only one"]})
    assert (run.namespace, run.graph_name, run.sampled, run.baggage) == ("", "", True, {})
    assert (run.caller_trace_id, run.caller_span_id, run.emit_from_ns) == (None, None, 0)
    assert before <= run.start_ns <= time.time_ns()  # no start stored: now
    numbers = RunContext.from_document({"run_id": 5, "baggage": {"n": 1}, "start_ns": "9", "sampled": 0})
    assert (numbers.run_id, numbers.baggage, numbers.start_ns, numbers.sampled) == ("5", {"n": "1"}, 9, False)


def test_the_root_context_is_the_remote_root_with_the_runs_baggage_and_nothing_current() -> None:
    run = RunContext(RUN_ID, "ns", "g", 1, True, {"tenant": "acme"})
    with trace.get_tracer("t").start_as_current_span("unrelated"):
        context = run.root_context()
    root = trace.get_current_span(context).get_span_context()
    assert (root.trace_id, root.span_id) == (trace_id_for_run(RUN_ID), run_span_id(RUN_ID))
    assert root.is_remote
    assert baggage.get_all(context) == {"tenant": "acme"}


@pytest.mark.parametrize("sampled", [True, False])
def test_the_carrier_is_the_roots_traceparent_with_the_decision_and_the_baggage(sampled: bool) -> None:
    with_baggage = RunContext(RUN_ID, "ns", "g", 1, sampled, {"tenant": "acme"}).carrier()
    flag = "01" if sampled else "00"
    assert with_baggage == {
        "traceparent": f"00-{trace_id_for_run(RUN_ID):032x}-{run_span_id(RUN_ID):016x}-{flag}",
        "baggage": "tenant=acme",
    }
    assert set(RunContext(RUN_ID, "ns", "g", 1, sampled).carrier()) == {"traceparent"}


def test_the_enqueue_extension_names_the_run_parents_retry_count_and_carrier() -> None:
    run = RunContext(RUN_ID, "ns", "greet", 1, True, {"tenant": "acme"})
    extension = enqueue_extension(run, {"start": "s0", "split": 17}, retry_count=True)  # type: ignore[arg-type]
    assert extension == {
        "run_id": RUN_ID,
        "graph_name": "greet",
        "parents": {"start": "s0", "split": "17"},
        "retry_count": 1,
        **run.carrier(),
        "node_spans": "server",
    }
    assert list(extension["parents"]) == ["start", "split"]  # the last is the direct parent
    assert "node_spans" not in enqueue_extension(run, {}, 0, node_spans_by_server=False)
