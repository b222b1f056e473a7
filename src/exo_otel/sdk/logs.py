"""Log correlation: records emitted while a node runs carry the trace id, span id and run id."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace

from exo_otel.core.redaction import Redactor
from exo_otel.core.sanitize import log_safe

TRACE_ID_FIELD: Final = "otelTraceID"
SPAN_ID_FIELD: Final = "otelSpanID"
RUN_ID_FIELD: Final = "exosphere_run_id"
"""Record attribute names: usable as ``%(otelTraceID)s %(exosphere_run_id)s`` in a format string.

The first two are the names the OpenTelemetry logging instrumentation uses; outside a span they
hold ``0``, and the run id is empty outside a run, so a format string never fails.
"""

RecordFactory = Callable[..., logging.LogRecord]


class LogFields:
    """What records made inside one execution carry, worked out once when the execution starts.

    The run id is set by exo_otel where it places a state in its run, never read from incoming
    baggage (which anyone upstream can forge); ``redact`` takes the execution's secrets out.
    """

    __slots__ = ("ids", "redact", "run_id", "span")

    def __init__(self, span: trace.Span, safe_run_id: str, redact: Callable[[str], str]) -> None:
        """``safe_run_id`` went through `log_safe` (a run id with a newline must not forge a log line)."""
        context = span.get_span_context()
        self.span = span
        self.ids = {
            TRACE_ID_FIELD: f"{context.trace_id:032x}" if context.is_valid else "0",
            SPAN_ID_FIELD: f"{context.span_id:016x}" if context.is_valid else "0",
        }
        self.run_id = safe_run_id
        self.redact = redact


_FIELDS_KEY: Final = otel_context.create_key("exo_otel.log_fields")


def with_log_fields(context: otel_context.Context, fields: LogFields) -> otel_context.Context:
    """``context`` with what its log records carry."""
    return otel_context.set_value(_FIELDS_KEY, fields, context)


def with_log_context(
    context: otel_context.Context, run_id: str | None, redact: Callable[[str], str]
) -> otel_context.Context:
    """``context`` with the run id its log records carry and the redaction they go through.

    The trace and span ids are those of the span current in ``context``, formatted once here.
    """
    safe_run_id = log_safe(run_id) if run_id is not None else ""
    return with_log_fields(context, LogFields(trace.get_current_span(context), safe_run_id, redact))


def _redact_record(record: logging.LogRecord, redact: Callable[[str], str]) -> None:
    """Take secret values out of a record's message and of its formatted exception."""
    message = record.getMessage()
    redacted = redact(message)
    if redacted != message:
        record.msg, record.args = redacted, None
    if record.exc_info and not record.exc_text:
        # Formatters use exc_text when set: the traceback's text, secrets out.
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))


class _CorrelatingFactory:
    """A log record factory that adds the current ids, then defers to the factory it replaced."""

    def __init__(self, previous: RecordFactory) -> None:
        self.previous = previous

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.previous(*args, **kwargs)
        try:
            current = otel_context.get_current()
            fields = current.get(_FIELDS_KEY)
            if type(fields) is not LogFields:
                fields = None
            if TRACE_ID_FIELD not in record.__dict__:
                span = trace.get_current_span(current)
                if fields is not None and span is fields.span:
                    record.__dict__.update(fields.ids)
                else:  # outside an execution, or inside a span the node code started
                    context = span.get_span_context()
                    valid = context.is_valid
                    setattr(record, TRACE_ID_FIELD, f"{context.trace_id:032x}" if valid else "0")
                    setattr(record, SPAN_ID_FIELD, f"{context.span_id:016x}" if valid else "0")
            if fields is None:
                setattr(record, RUN_ID_FIELD, "")
            else:
                redact = fields.redact
                if not isinstance(redact, Redactor) or redact:  # an empty Redactor has nothing to take out
                    _redact_record(record, redact)
                setattr(record, RUN_ID_FIELD, fields.run_id)
        except Exception:  # a log call must never fail because of us
            pass
        return record


def install_log_correlation() -> None:
    """Wrap the current log record factory (once)."""
    current = logging.getLogRecordFactory()
    if not isinstance(current, _CorrelatingFactory):
        logging.setLogRecordFactory(_CorrelatingFactory(current))


def remove_log_correlation() -> None:
    """Put back the factory we wrapped, if nobody has wrapped ours since."""
    current = logging.getLogRecordFactory()
    if isinstance(current, _CorrelatingFactory):
        logging.setLogRecordFactory(current.previous)
