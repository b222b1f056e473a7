"""`exo_otel.core.spans`: starting spans with pinned ids, ending them, recording failures, the guard."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind, StatusCode, TraceFlags
from pydantic import BaseModel, ValidationError

from exo_otel.core.ids import run_span_id, state_span_id, trace_id_for_run
from exo_otel.core.providers import install_run_id_generator
from exo_otel.core.spans import (
    end_span,
    error_type,
    failure_description,
    guard,
    qualified_name,
    record_failure,
    redact_recorded,
    start_span,
)

RUN_ID = "9d2c6f0e-3b1a-4c5d-8e7f-001122334455"
SECRET = "hunter2-is-the-password"


class Outer:
    class InnerError(Exception):
        pass


class _Raising(SpanProcessor):
    def __init__(self, on_start: bool = False, on_end: bool = False) -> None:
        self.raise_on_start, self.raise_on_end = on_start, on_end

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if self.raise_on_start:
            raise RuntimeError("processor broke on start")

    def on_end(self, span: ReadableSpan) -> None:
        if self.raise_on_end:
            raise RuntimeError("processor broke on end")


def _provider_with(processor: SpanProcessor, exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    install_run_id_generator(provider)
    provider.add_span_processor(processor)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def test_qualified_names_keep_builtins_bare_and_qualify_the_rest() -> None:
    assert qualified_name(ValueError("x")) == "ValueError"
    assert qualified_name(KeyboardInterrupt()) == "KeyboardInterrupt"
    assert qualified_name(json.JSONDecodeError("m", "doc", 0)) == "json.decoder.JSONDecodeError"
    assert qualified_name(Outer.InnerError()) == f"{__name__}.Outer.InnerError"


def test_error_type_is_the_qualified_name_unless_exo_otel_named_the_failure() -> None:
    named = RuntimeError("stopped")
    named._exo_otel_error_type = "SIGTERM"  # type: ignore[attr-defined]
    assert error_type(named) == "SIGTERM"
    for not_a_name in ("", 15, None):
        exc = RuntimeError()
        exc._exo_otel_error_type = not_a_name  # type: ignore[attr-defined]
        assert error_type(exc) == "RuntimeError"
    assert error_type(Outer.InnerError()) == f"{__name__}.Outer.InnerError"


def test_a_root_gets_the_pinned_trace_and_span_ids_and_is_not_made_current(
    tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    before = trace.get_current_span()
    span = start_span(
        tracer, "trigger g", kind=SpanKind.PRODUCER, context=Context(),
        trace_id=trace_id_for_run(RUN_ID), span_id=run_span_id(RUN_ID), start_time=1_000, attributes={"a": 1},
    )
    assert trace.get_current_span() is before
    end_span(span, 2_000)
    [finished] = exporter.get_finished_spans()
    assert finished.context is not None
    ids = (finished.context.trace_id, finished.context.span_id)
    assert ids == (trace_id_for_run(RUN_ID), run_span_id(RUN_ID))
    assert finished.parent is None
    assert (finished.kind, finished.start_time, finished.end_time) == (SpanKind.PRODUCER, 1_000, 2_000)
    assert dict(finished.attributes or {}) == {"a": 1}


def test_a_child_keeps_its_parents_trace_and_takes_the_pinned_span_id(
    tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    root = SpanContext(trace_id_for_run(RUN_ID), run_span_id(RUN_ID), True, TraceFlags(TraceFlags.SAMPLED))
    parent = trace.set_span_in_context(trace.NonRecordingSpan(root), Context())
    end_span(start_span(tracer, "node a", context=parent, span_id=state_span_id("s-1")))
    [node] = exporter.get_finished_spans()
    assert node.context is not None and node.parent is not None
    assert node.context.trace_id == root.trace_id
    assert node.context.span_id == state_span_id("s-1")
    assert node.parent.span_id == root.span_id


def test_the_pin_holds_for_one_span_only(tracer: trace.Tracer, exporter: InMemorySpanExporter) -> None:
    end_span(start_span(tracer, "pinned", context=Context(), trace_id=7, span_id=9))
    end_span(start_span(tracer, "free", context=Context()))
    pinned, free = exporter.get_finished_spans()
    assert pinned.context is not None and free.context is not None
    assert (pinned.context.trace_id, pinned.context.span_id) == (7, 9)
    assert free.context.trace_id != 7 and free.context.span_id != 9


def test_names_attributes_and_link_attributes_are_made_encodable(
    tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    target = SpanContext(5, 6, True)
    span = start_span(
        tracer, "node \ud800x", attributes={"k\udfff": "v\ud800", "n": 3, "l": ["a\ud800", "b"]},
        links=[Link(target, {"why": "\udc00"})],
    )
    end_span(span)
    [finished] = exporter.get_finished_spans()
    assert finished.name == "node \ufffdx"
    assert dict(finished.attributes or {}) == {"k\ufffd": "v\ufffd", "n": 3, "l": ("a\ufffd", "b")}
    [link] = finished.links
    assert link.context.span_id == 6 and dict(link.attributes or {}) == {"why": "\ufffd"}
    # Everything recorded encodes, as the OTLP exporter will need.
    for text in [finished.name, *map(str, (finished.attributes or {}).values())]:
        text.encode("utf-8")


def test_a_processor_failing_on_start_gives_an_invalid_span_a_warning_and_no_leftover_pin(
    exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    broken = _Raising(on_start=True)
    provider = _provider_with(broken, exporter)
    tracer = provider.get_tracer("t")
    with caplog.at_level(logging.WARNING, logger="exo_otel"):
        span = start_span(tracer, "node x", context=Context(), trace_id=11, span_id=12)
    assert span is trace.INVALID_SPAN
    assert any("starting span 'node x' failed" in r.getMessage() for r in caplog.records)
    broken.raise_on_start = False
    end_span(start_span(tracer, "after", context=Context()))
    after = next(s for s in exporter.get_finished_spans() if s.name == "after")
    assert after.context is not None
    assert (after.context.trace_id, after.context.span_id) != (11, 12)
    assert after.context.span_id != 12


def test_a_processor_failing_on_end_is_logged_and_not_raised(
    exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    provider = _provider_with(_Raising(on_end=True), exporter)
    span = start_span(provider.get_tracer("t"), "node x")
    with caplog.at_level(logging.WARNING, logger="exo_otel"):
        end_span(span, 5_000)
    assert any("ending a span failed" in r.getMessage() for r in caplog.records)
    assert not span.is_recording()  # it did end


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_a_failure_records_status_error_type_and_the_exception_event(
    tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    span = start_span(tracer, "execute N")
    record_failure(span, _raised(Outer.InnerError("bad input")))
    end_span(span)
    [finished] = exporter.get_finished_spans()
    assert finished.status.status_code is StatusCode.ERROR
    assert finished.status.description == "InnerError: bad input"
    assert (finished.attributes or {})["error.type"] == f"{__name__}.Outer.InnerError"
    [event] = finished.events
    assert event.name == "exception"
    attributes = dict(event.attributes or {})
    assert attributes["exception.type"] == f"{__name__}.Outer.InnerError"
    assert attributes["exception.message"] == "bad input"
    assert "Traceback" in str(attributes["exception.stacktrace"])
    assert "bad input" in str(attributes["exception.stacktrace"])


def test_a_failure_is_redacted_everywhere_it_is_recorded(
    tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    span = start_span(tracer, "execute N")
    exc = _raised(RuntimeError(f"login with {SECRET} refused"))
    record_failure(span, exc, lambda t: t.replace(SECRET, "[R]"))
    end_span(span)
    [finished] = exporter.get_finished_spans()
    recorded = [finished.status.description or "", *map(str, (finished.events[0].attributes or {}).values())]
    assert all(SECRET not in text for text in recorded)
    assert finished.status.description == "RuntimeError: login with [R] refused"


class _Login(BaseModel):
    port: int


def test_a_validation_error_is_recorded_without_the_input_values_it_echoes(
    tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    with pytest.raises(ValidationError) as raised:
        _Login(port=SECRET)  # type: ignore[arg-type]
    assert SECRET in str(raised.value)  # what pydantic itself would show
    wrapped = _raised(RuntimeError("node failed"))
    wrapped.__cause__ = raised.value
    for exc in (raised.value, wrapped):
        span = start_span(tracer, "execute N")
        record_failure(span, exc)
        end_span(span)
    for finished in exporter.get_finished_spans():
        event = dict(finished.events[0].attributes or {})
        recorded = [finished.status.description or "", *map(str, event.values())]
        assert all(SECRET not in text for text in recorded), recorded
    direct = exporter.get_finished_spans()[0]
    assert direct.status.description is not None and "port" in direct.status.description
    assert (direct.attributes or {})["error.type"] == "pydantic_core._pydantic_core.ValidationError"


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no")


def test_unprintable_and_unencodable_exceptions_are_recorded_all_the_same(
    tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    for exc in (_Unprintable(), ValueError("bad \ud800 byte")):
        span = start_span(tracer, "execute N")
        record_failure(span, _raised(exc))
        end_span(span)
    unprintable, surrogate = exporter.get_finished_spans()
    assert unprintable.status.description == "_Unprintable: <unprintable _Unprintable>"
    assert surrogate.status.description == "ValueError: bad \ufffd byte"
    assert (surrogate.events[0].attributes or {})["exception.message"] == "bad \ufffd byte"
    assert failure_description(ValueError("x\ud800"), lambda t: t.replace("x", "y")) == "ValueError: y\ufffd"


def test_a_failure_on_a_span_that_is_not_recording_does_nothing() -> None:
    span = trace.NonRecordingSpan(SpanContext(1, 2, False))
    record_failure(span, ValueError("x"))  # no error, nothing to record on
    assert not span.is_recording()


def test_redacting_what_was_recorded_renames_and_rewrites_string_attributes(
    tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    span = start_span(tracer, f"node {SECRET}", attributes={"a": f"x{SECRET}y", "b": "clean", "n": 4})
    redact_recorded(span, lambda t: t.replace(SECRET, "[R]"))
    end_span(span)
    [finished] = exporter.get_finished_spans()
    assert finished.name == "node [R]"
    assert dict(finished.attributes or {}) == {"a": "x[R]y", "b": "clean", "n": 4}


def test_the_guard_logs_an_exception_and_lets_the_program_go_on(caplog: pytest.LogCaptureFixture) -> None:
    reached = []
    shared = guard("doing a thing")
    with caplog.at_level(logging.WARNING, logger="exo_otel"):
        with shared:
            raise KeyError("inner bug")
        reached.append(1)
        with shared:  # reusable
            reached.append(2)
    assert reached == [1, 2]
    [record] = caplog.records
    assert "doing a thing failed; the instrumented code continues" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], KeyError)


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(3), asyncio.CancelledError()])
def test_the_guard_lets_base_exceptions_through(exc: BaseException) -> None:
    with pytest.raises(type(exc)) as raised, guard("stopping"):
        raise exc
    assert raised.value is exc
