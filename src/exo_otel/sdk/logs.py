"""Log correlation: records emitted while a node runs carry the trace id, span id and run id."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace

from exo_otel.core.sanitize import log_safe

TRACE_ID_FIELD: Final = "otelTraceID"
SPAN_ID_FIELD: Final = "otelSpanID"
RUN_ID_FIELD: Final = "exosphere_run_id"
"""Record attribute names: usable as ``%(otelTraceID)s %(exosphere_run_id)s`` in a format string.

The first two are the names the OpenTelemetry logging instrumentation uses; outside a span they
hold ``0``, and the run id is empty outside a run, so a format string never fails.
"""

RecordFactory = Callable[..., logging.LogRecord]

# Set by exo_otel where it places a state in its run; never read from incoming baggage, which
# anyone upstream can forge.
_RUN_ID_KEY: Final = otel_context.create_key("exo_otel.log_run_id")
# The execution's secret redactor: records made while a node runs lose its secrets' values.
_REDACT_KEY: Final = otel_context.create_key("exo_otel.log_redact")


def with_log_context(
    context: otel_context.Context, run_id: str | None, redact: Callable[[str], str]
) -> otel_context.Context:
    """``context`` with the run id its log records carry and the redaction they go through."""
    if run_id is not None:
        context = otel_context.set_value(_RUN_ID_KEY, run_id, context)
    return otel_context.set_value(_REDACT_KEY, redact, context)


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
            context = trace.get_current_span().get_span_context()
            if not hasattr(record, TRACE_ID_FIELD):
                setattr(record, TRACE_ID_FIELD, f"{context.trace_id:032x}" if context.is_valid else "0")
                setattr(record, SPAN_ID_FIELD, f"{context.span_id:016x}" if context.is_valid else "0")
            redact = otel_context.get_value(_REDACT_KEY)
            if redact and callable(redact):
                _redact_record(record, redact)
            run_id = otel_context.get_value(_RUN_ID_KEY)
            # Escaped: a run id with a newline must not forge a log line.
            setattr(record, RUN_ID_FIELD, log_safe(run_id) if run_id is not None else "")
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
