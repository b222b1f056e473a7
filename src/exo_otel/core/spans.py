"""The one way exo_otel starts spans with pinned ids, its error policy, and the guard around our own code."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import Attributes

from exo_otel.core.attributes import ERROR_TYPE
from exo_otel.core.ids import pinned_ids

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
) -> Span:
    """Start (not activate) a span, pinning its trace id (roots only) and span id when given.

    The ids take effect with an SDK tracer whose id generator is a `RunIdGenerator`; elsewhere the
    span gets ordinary ids and the caller's attributes still name the run.
    """
    with pinned_ids(trace_id, span_id):
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


def record_failure(span: Span, exc: BaseException) -> None:
    """Mark a span failed by ``exc``: ERROR status, ``error.type`` and the exception event."""
    if not span.is_recording():
        return
    span.set_attribute(ERROR_TYPE, qualified_name(exc))
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


@contextmanager
def guard(what: str) -> Iterator[None]:
    """Run instrumentation code so that a bug in it is logged and the user's program goes on."""
    try:
        yield
    except Exception:
        _logger.warning("exo_otel: %s failed; the instrumented code continues", what, exc_info=True)
