"""Log correlation: records emitted while a node runs carry the trace id, span id and run id."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace

from exo_otel.core.redaction import Redactor
from exo_otel.core.sanitize import log_safe
from exo_otel.sdk.context_keys import SPAN_KEY
from exo_otel.sdk.context_keys import get_current as _get_current

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
    baggage (which anyone upstream can forge); ``redactor`` takes the execution's secrets out.
    """

    __slots__ = ("redactor", "run_id", "span", "span_id", "trace_id")

    def __init__(
        self,
        span: trace.Span,
        safe_run_id: str,
        redactor: Redactor | None = None,
        known_trace: tuple[int, str] | None = None,
    ) -> None:
        """``safe_run_id`` went through `log_safe` (a run id with a newline must not forge a log line);
        ``known_trace`` is a trace id and its 32 hex digits (the run's), used when it is the span's."""
        context = span.get_span_context()
        self.span = span
        """Records made while it is current get ``trace_id`` and ``span_id``; inside a span the node
        code started, that span's ids are worked out per record."""
        if not context.is_valid:
            self.trace_id = self.span_id = "0"
        else:
            trace_id = context.trace_id
            if known_trace is not None and known_trace[0] == trace_id:
                self.trace_id = known_trace[1]
            else:
                self.trace_id = trace_id.to_bytes(16).hex()
            # The 16 hex digits f"{span_id:016x}" gives, in half the instructions.
            self.span_id = context.span_id.to_bytes(8).hex()
        self.run_id = safe_run_id
        self.redactor = redactor


_FIELDS_KEY: Final = otel_context.create_key("exo_otel.log_fields")


def with_log_fields(context: otel_context.Context, fields: LogFields) -> otel_context.Context:
    """``context`` with what its log records carry."""
    return otel_context.set_value(_FIELDS_KEY, fields, context)


def with_log_context(
    context: otel_context.Context, run_id: str | None, redactor: Redactor | None = None
) -> otel_context.Context:
    """``context`` with the run id its log records carry and the redaction they go through.

    The trace and span ids are those of the span current in ``context``, formatted once here.
    """
    safe_run_id = log_safe(run_id) if run_id is not None else ""
    return with_log_fields(context, LogFields(trace.get_current_span(context), safe_run_id, redactor))


def _redact_record(record: logging.LogRecord, redact: Callable[[str], str]) -> None:
    """Take secret values out of a record's message and of its formatted exception."""
    message = record.getMessage()
    redacted = redact(message)
    if redacted != message:
        record.msg, record.args = redacted, None
    if record.exc_info and not record.exc_text:
        # Formatters use exc_text when set: the traceback's text, secrets out.
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))


_PREVIOUS: Final = "_exo_otel_previous"
"""The attribute of exo_otel's log record factory holding the factory it replaced."""


def correlating_factory(previous: RecordFactory) -> RecordFactory:
    """A log record factory that adds the current ids, then defers to ``previous``, the factory it
    replaces. A function, not an object with ``__call__``: it is called for every record."""
    # A record `logging.LogRecord` just made has no trace id yet: only another factory (the
    # OpenTelemetry logging instrumentation's) may have set one.
    fresh = previous is logging.LogRecord

    def correlated_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        # Without keywords (how `logging.Logger.makeRecord` calls it) no empty dict is passed on.
        record = previous(*args, **kwargs) if kwargs else previous(*args)
        # Attributes set one by one, not through record.__dict__: that would make the record's dict
        # a separate object early, which costs more than the three fields.
        try:
            current = _get_current()
            fields = current.get(_FIELDS_KEY)
            if type(fields) is not LogFields:
                if fresh or getattr(record, TRACE_ID_FIELD, None) is None:
                    _set_span_ids(record, trace.get_current_span(current))
                record.exosphere_run_id = ""
                return record
            # Unless set already (by the OpenTelemetry logging instrumentation's factory).
            if fresh or getattr(record, TRACE_ID_FIELD, None) is None:
                # With no span key found (SPAN_KEY None) ``current.get`` answers None: never the span.
                if current.get(SPAN_KEY) is fields.span:  # type: ignore[arg-type]
                    record.otelTraceID = fields.trace_id
                    record.otelSpanID = fields.span_id
                else:  # inside a span the node code started
                    _set_span_ids(record, trace.get_current_span(current))
            record.exosphere_run_id = fields.run_id
            if fields.redactor is not None and fields.redactor.values:
                _redact_record(record, fields.redactor)
        except Exception:  # a log call must never fail because of us
            pass
        return record

    setattr(correlated_record, _PREVIOUS, previous)
    return correlated_record


def _set_span_ids(record: logging.LogRecord, span: trace.Span) -> None:
    context = span.get_span_context()
    if context.is_valid:
        record.otelTraceID = context.trace_id.to_bytes(16).hex()  # f"{trace_id:032x}", cheaper
        record.otelSpanID = context.span_id.to_bytes(8).hex()
    else:
        record.otelTraceID = record.otelSpanID = "0"


def install_log_correlation() -> None:
    """Wrap the current log record factory (once)."""
    current = logging.getLogRecordFactory()
    if getattr(current, _PREVIOUS, None) is None:
        logging.setLogRecordFactory(correlating_factory(current))


def remove_log_correlation() -> None:
    """Put back the factory we wrapped, if nobody has wrapped ours since."""
    previous = getattr(logging.getLogRecordFactory(), _PREVIOUS, None)
    if previous is not None:
        logging.setLogRecordFactory(previous)
