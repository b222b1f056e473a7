"""The keys under which the OpenTelemetry API keeps the current span and the baggage in a `Context`.

Found once, through the API itself (the one key a call puts in an empty context), so the runtime's hot
path can read and build contexts directly. None when the API ever stores them differently: callers
then go through the API calls. The same goes for the keys ``suppress_instrumentation`` sets (what
``is_instrumentation_enabled`` reads) and for the context variable that holds the current context.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Final

from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.instrumentation.utils import is_instrumentation_enabled, suppress_instrumentation


def only_key(context: Context) -> str | None:
    """The one key an API call put in an empty context, or None when it did something else."""
    keys = list(context)
    return keys[0] if len(keys) == 1 else None


SPAN_KEY: Final = only_key(trace.set_span_in_context(trace.INVALID_SPAN, Context()))
BAGGAGE_KEY: Final = only_key(baggage.set_baggage("exo_otel.probe", "1", Context()))


def _current_context_getter() -> Callable[[], Context]:
    """The ``get`` of the context variable the API keeps the current context in (what
    ``context.get_current`` answers, without its two calls), or the API call when it keeps it elsewhere."""
    probe = Context()
    token = otel_context.attach(probe)
    try:
        held = [var for var, value in contextvars.copy_context().items() if value is probe]
        getter = held[0].get if len(held) == 1 and isinstance(held[0].get(), Context) else None
        if getter is None or getter() is not otel_context.get_current():
            return otel_context.get_current
        return getter
    finally:
        otel_context.detach(token)


def _suppression_keys() -> tuple[str, str] | None:
    """The two keys ``suppress_instrumentation`` sets, when they alone decide ``is_instrumentation_enabled``
    (each one suppresses, and nothing else in an empty context does)."""
    token = otel_context.attach(Context())
    try:
        with suppress_instrumentation():
            inside = otel_context.get_current()
            suppressed = not is_instrumentation_enabled()
        keys = tuple(inside)
        if len(keys) != 2 or not suppressed or not is_instrumentation_enabled():
            return None
        for key in keys:
            alone = otel_context.attach(Context({key: inside[key]}))
            try:
                if is_instrumentation_enabled():
                    return None
            finally:
                otel_context.detach(alone)
        return keys[0], keys[1]
    finally:
        otel_context.detach(token)


get_current: Final = _current_context_getter()
"""``opentelemetry.context.get_current``, in one call."""
_SUPPRESSION_KEYS: Final = _suppression_keys()
_FIRST, _SECOND = _SUPPRESSION_KEYS or ("", "")


def _enabled_by_keys() -> bool:
    get = get_current().get
    return not (get(_FIRST) or get(_SECOND))


instrumentation_enabled: Final[Callable[[], bool]] = (
    is_instrumentation_enabled if _SUPPRESSION_KEYS is None else _enabled_by_keys
)
"""``is_instrumentation_enabled``, reading the current context once."""
