"""The keys under which the OpenTelemetry API keeps the current span and the baggage in a `Context`.

Found once, through the API itself (the one key a call puts in an empty context), so the runtime's hot
path can read and build contexts directly. None when the API ever stores them differently: callers
then go through the API calls.
"""

from __future__ import annotations

from typing import Final

from opentelemetry import baggage, trace
from opentelemetry.context import Context


def only_key(context: Context) -> str | None:
    """The one key an API call put in an empty context, or None when it did something else."""
    keys = list(context)
    return keys[0] if len(keys) == 1 else None


SPAN_KEY: Final = only_key(trace.set_span_in_context(trace.INVALID_SPAN, Context()))
BAGGAGE_KEY: Final = only_key(baggage.set_baggage("exo_otel.probe", "1", Context()))
