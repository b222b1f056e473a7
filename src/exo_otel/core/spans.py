"""The one way exo_otel starts spans with pinned ids, its error policy, and the guard around our own code.

Span names and attributes are cleaned (see `exo_otel.core.sanitize`) and starting and ending are
shielded: a span processor raising in ``on_start`` or ``on_end`` is logged, never raised into the
instrumented code, and never stops exo_otel from ending its other spans.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Sequence
from types import TracebackType

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import Attributes

from exo_otel.core.attributes import ERROR_TYPE
from exo_otel.core.ids import pin_ids, unpin_ids
from exo_otel.core.sanitize import clean_attributes, clean_text

_logger = logging.getLogger("exo_otel")


def qualified_name(exc: BaseException) -> str:
    """``module.Class`` of an exception (builtins keep their bare name), for ``error.type``."""
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def start_span(
    tracer: trace.Tracer,
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    context: Context | None = None,
    trace_id: int | None = None,
    span_id: int | None = None,
    start_time: int | None = None,
    attributes: Attributes = None,
    links: Sequence[Link] = (),
    cleaned: bool = False,
) -> Span:
    """Start (not activate) a span, pinning its trace id (roots only) and span id when given.

    The ids take effect with an SDK tracer whose id generator is a `RunIdGenerator`; elsewhere the
    span gets ordinary ids (and a state's spans, which leave the run to the trace id, name no run).
    ``cleaned`` says the name, the attributes and the links' attributes went through
    `exo_otel.core.sanitize` already.
    """
    if not cleaned:
        name = clean_text(name)
        attributes = clean_attributes(attributes) if attributes else attributes
        links = [Link(link.context, clean_attributes(link.attributes or {})) for link in links]
    try:
        token = pin_ids(trace_id, span_id) if trace_id is not None or span_id is not None else None
        try:
            return tracer.start_span(
                name,
                context=context,
                kind=kind,
                attributes=attributes,
                links=links,
                start_time=start_time,
                record_exception=False,
                set_status_on_exception=False,
            )
        finally:
            if token is not None:
                unpin_ids(token)
    except Exception:
        _logger.warning("exo_otel: starting span %r failed (a span processor?)", name, exc_info=True)
        return trace.INVALID_SPAN


def end_span(span: Span, end_time: int | None = None) -> None:
    """End ``span``; a span processor raising in ``on_end`` is logged, never raised."""
    try:
        span.end(end_time)
    except Exception:
        _logger.warning("exo_otel: ending a span failed (a span processor?)", exc_info=True)


def error_type(exc: BaseException) -> str:
    """``error.type`` of an exception: `qualified_name`, unless exo_otel named it (a signal)."""
    own = getattr(exc, "_exo_otel_error_type", None)
    return own if isinstance(own, str) and own else qualified_name(exc)


Redact = Callable[[str], str]


def _validation_summary(exc: BaseException) -> str | None:
    """A pydantic ValidationError without the input values it echoes (secrets among them); else None."""
    errors = getattr(exc, "errors", None)
    if not type(exc).__module__.startswith("pydantic") or not callable(errors):
        return None
    try:
        details = errors(include_url=False, include_input=False, include_context=False)
        parts = [f"{'.'.join(str(p) for p in d.get('loc', ()))}: {d.get('msg', '')}" for d in details]
        return f"{len(parts)} validation error(s) for {getattr(exc, 'title', '?')}: " + "; ".join(parts)
    except Exception:
        return "validation failed"


def _message(exc: BaseException) -> str:
    summary = _validation_summary(exc)
    if summary is not None:
        return summary
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__}>"


def _stacktrace(exc: BaseException) -> str:
    try:
        text = "".join(traceback.format_exception(exc))
    except Exception:
        return ""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:  # the chain, where a validation error may hide
        seen.add(id(link))
        summary = _validation_summary(link)
        if summary is not None:
            try:
                raw = str(link)
            except Exception:
                raw = ""
            if raw:
                text = text.replace(raw, summary)
        link = link.__cause__ or link.__context__
    return text


def failure_description(exc: BaseException, redact: Redact | None = None) -> str:
    """``Type: message`` for a status, secrets redacted, validation inputs left out, encodable."""
    text = f"{type(exc).__name__}: {_message(exc)}"
    return clean_text(redact(text) if redact else text)


def redact_recorded(span: Span, redact: Redact) -> None:
    """Redact what ``span`` recorded so far: its name and its string attributes (SDK spans only)."""
    name = getattr(span, "name", None)
    if isinstance(name, str) and redact(name) != name:
        span.update_name(redact(name))
    attributes = getattr(span, "attributes", None) or {}
    for key, value in list(attributes.items()):
        if isinstance(value, str) and redact(value) != value:
            span.set_attribute(key, redact(value))


def record_failure(span: Span, exc: BaseException, redact: Redact | None = None) -> None:
    """Mark a span failed by ``exc``: ERROR status, ``error.type`` and the exception event.

    Texts are made safe first: ``redact`` takes known secrets out, a pydantic validation error
    loses the input values it echoes, and strings are made encodable.
    """
    if not span.is_recording():
        return

    def safe(text: str) -> str:
        return clean_text(redact(text) if redact else text)

    span.set_attribute(ERROR_TYPE, error_type(exc))
    span.add_event(
        "exception",
        {
            "exception.type": qualified_name(exc),
            "exception.message": safe(_message(exc)),
            "exception.stacktrace": safe(_stacktrace(exc)),
        },
    )
    span.set_status(Status(StatusCode.ERROR, failure_description(exc, redact)))


class guard:
    """Run instrumentation code so that a bug in it is logged and the user's program goes on.

    A class, not a generator: it is entered several times per state on the runtime's hot path. The
    per-state path uses ``try``/``except Exception`` with `failed` instead (no call on success).
    """

    __slots__ = ("_what",)

    def __init__(self, what: str) -> None:
        self._what = what

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if not isinstance(exc, Exception):
            return False  # nothing raised, or a BaseException (cancellation, exit): it goes on
        self.failed(exc)
        return True

    def failed(self, exc: Exception) -> None:
        """Log ``exc``, raised by the instrumentation code this guard names."""
        _logger.warning("exo_otel: %s failed; the instrumented code continues", self._what, exc_info=exc)
