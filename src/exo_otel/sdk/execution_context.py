"""The context an execution runs in, made in one step: its span current, its baggage, its log fields.

Made with the OpenTelemetry API this takes four context copies (span, two baggage entries, log
fields) for every state. The keys the API uses are found once, through the API itself, so the
context is built as one new `Context`; if the API ever stores them differently, the API calls are
used instead.
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import baggage, trace
from opentelemetry.context import Context

from exo_otel.sdk.logs import LogFields, with_log_fields


def _only_key(context: Context) -> str | None:
    """The one key an API call put in an empty context, or None when it did something else."""
    keys = list(context)
    return keys[0] if len(keys) == 1 else None


_SPAN_KEY = _only_key(trace.set_span_in_context(trace.INVALID_SPAN, Context()))
_BAGGAGE_KEY = _only_key(baggage.set_baggage("exo_otel.probe", "1", Context()))
_LOG_FIELDS_KEY = _only_key(with_log_fields(Context(), LogFields(trace.INVALID_SPAN, "")))


def execution_context(
    base: Context, span: trace.Span, entries: Mapping[str, str], log_fields: LogFields
) -> Context:
    """``base`` with ``span`` current, ``entries`` added to its baggage and ``log_fields`` set."""
    if _SPAN_KEY is None or _BAGGAGE_KEY is None or _LOG_FIELDS_KEY is None:
        current = trace.set_span_in_context(span, base)
        for key, value in entries.items():
            current = baggage.set_baggage(key, value, current)
        return with_log_fields(current, log_fields)
    inherited = base.get(_BAGGAGE_KEY)
    merged = {**inherited, **entries} if isinstance(inherited, dict) else dict(entries)
    return Context({**base, _SPAN_KEY: span, _BAGGAGE_KEY: merged, _LOG_FIELDS_KEY: log_fields})
