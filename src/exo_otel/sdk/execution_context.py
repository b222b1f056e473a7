"""The context an execution runs in, made in one step: its span current, its baggage, its log fields.

Made with the OpenTelemetry API this takes four context copies (span, two baggage entries, log
fields) for every state. With the API's keys (`exo_otel.sdk.context_keys`) the context is built as
one new `Context`; if they could not be found, the API calls are used instead.
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import baggage, trace
from opentelemetry.context import Context

from exo_otel.sdk.context_keys import BAGGAGE_KEY, SPAN_KEY, only_key
from exo_otel.sdk.logs import LogFields, with_log_fields

_LOG_FIELDS_KEY = only_key(with_log_fields(Context(), LogFields(trace.INVALID_SPAN, "")))


def execution_context(
    base: Context, span: trace.Span, entries: Mapping[str, str], log_fields: LogFields
) -> Context:
    """``base`` with ``span`` current, ``entries`` added to its baggage and ``log_fields`` set."""
    if SPAN_KEY is None or BAGGAGE_KEY is None or _LOG_FIELDS_KEY is None:
        current = trace.set_span_in_context(span, base)
        for key, value in entries.items():
            current = baggage.set_baggage(key, value, current)
        return with_log_fields(current, log_fields)
    inherited = base.get(BAGGAGE_KEY)
    merged = {**inherited, **entries} if isinstance(inherited, dict) else dict(entries)
    return Context({**base, SPAN_KEY: span, BAGGAGE_KEY: merged, _LOG_FIELDS_KEY: log_fields})
