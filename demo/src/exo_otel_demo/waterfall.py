"""A terminal waterfall of one trace: indented spans on a shared time axis, errors and retries marked.

With the state manager side a run's trace is ``run {graph}`` (the root), the client's ``trigger``,
the ``node`` spans and the run's outcome ``settle {graph}`` under it, and ``execute`` spans under the
nodes; without it the root is ``trigger {graph}``. Both draw the same way: children under their
parent in start order, the outcome last among its siblings.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from exo_otel.core.attributes import ERROR_TYPE, ERROR_TYPE_OTHER, RUN_STATUS, STATE_STATUS
from exo_otel.core.attributes import STATE_FANOUT_OF as FANOUT_OF
from exo_otel.core.attributes import STATE_RETRY_COUNT as RETRY_COUNT

BAR: Final = "█"
ERROR_MARK: Final = "✗"
# What the state manager side says of a failure it saw no exception for (error.type _OTHER).
OUTCOME_PREFIX: Final = "settle "


def retry_numbers(spans: Sequence[ReadableSpan]) -> dict[int, int]:
    """Span id -> retry number (1 for the first retry) of the node spans that retry a failed state.

    ``exosphere.state.retry_count`` says it where the state manager sent it. Otherwise a retry is a
    new state of the same node with the same upstream state: the same span name and the same link,
    so the later ones of such a group are the retries.
    """
    numbers: dict[int, int] = {}
    groups: dict[tuple[str, tuple[int, ...]], list[ReadableSpan]] = {}
    for span in spans:
        attributes = span.attributes or {}
        if not span.name.startswith("node ") or FANOUT_OF in attributes or span.context is None:
            continue
        count = attributes.get(RETRY_COUNT)
        if isinstance(count, int):
            if count > 0:
                numbers[span.context.span_id] = count
            continue
        upstream = tuple(sorted(link.context.span_id for link in span.links))
        groups.setdefault((span.name, upstream), []).append(span)
    for group in groups.values():
        ordered = sorted(group, key=lambda s: s.start_time or 0)
        for number, span in enumerate(ordered[1:], start=1):
            if span.context is not None:
                numbers[span.context.span_id] = number
    return numbers


def render_waterfall(spans: Sequence[ReadableSpan], width: int = 40, label_width: int = 34) -> str:
    """The trace as text: one line per span, children under parents in start order.

    Spans whose parent is not among ``spans`` are shown at the top level.
    """
    finished = [s for s in spans if s.start_time is not None and s.end_time is not None]
    if not finished:
        return "(no spans)"
    origin = min(s.start_time or 0 for s in finished)
    total = max(max(s.end_time or 0 for s in finished) - origin, 1)
    ids = {s.context.span_id for s in finished if s.context is not None}
    retries = retry_numbers(finished)
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in finished:
        parent = span.parent.span_id if span.parent is not None else None
        children.setdefault(parent if parent in ids else None, []).append(span)
    lines = [f"{'span':<{label_width}} {'0':<{width // 2}}{_ms(total):>{width - width // 2}}  duration"]

    def walk(parent: int | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=_order):
            start = (span.start_time or 0) - origin
            end = (span.end_time or 0) - origin
            first = min(int(start * width / total), width - 1)
            last = max(first + 1, round(end * width / total))
            bar = " " * first + BAR * (last - first)
            mark = f" {ERROR_MARK} {failure(span)}" if span.status.status_code is StatusCode.ERROR else ""
            copy = " (copy)" if span.attributes and FANOUT_OF in span.attributes else ""
            retry = span.context.span_id if span.context is not None else None
            retried = f" (retry {retries[retry]})" if retry in retries else ""
            label = ("  " * depth + span.name + copy + retried)[:label_width]
            lines.append(f"{label:<{label_width}} |{bar:<{width}}| {_ms(end - start):>9}{mark}")
            if span.context is not None:
                walk(span.context.span_id, depth + 1)

    walk(None, 0)
    return "\n".join(lines)


def _order(span: ReadableSpan) -> tuple[bool, int, str]:
    # The run's outcome spans the run: drawn after the nodes it sums up, not among them.
    return (span.name.startswith(OUTCOME_PREFIX), span.start_time or 0, span.name)


def failure(span: ReadableSpan) -> str:
    """What failed: the exception's type; for a span the state manager side made without one
    (``error.type`` ``_OTHER``), the state's or the run's status (``ERRORED``, ``FAILED``)."""
    attributes = span.attributes or {}
    error_type = attributes.get(ERROR_TYPE)
    if error_type is not None and error_type != ERROR_TYPE_OTHER:
        return str(error_type)
    status = attributes.get(STATE_STATUS, attributes.get(RUN_STATUS))
    return str(status if status is not None else error_type if error_type is not None else "error")


def _ms(nanoseconds: int) -> str:
    return f"{nanoseconds / 1e6:.1f} ms"
