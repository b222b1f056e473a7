"""Helpers for span assertions: an indented dump of a trace's tree, and waiting for spans."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


def dump_tree(spans: Sequence[ReadableSpan], label: Callable[[ReadableSpan], str] | None = None) -> str:
    """Indented tree of the spans by parent; children sorted by label; orphans shown as roots."""
    name = label or (lambda span: span.name)
    ids = {span.context.span_id for span in spans}
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in spans:
        parent = span.parent.span_id if span.parent is not None else None
        children.setdefault(parent if parent in ids else None, []).append(span)
    lines: list[str] = []

    def walk(parent: int | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=name):
            lines.append("  " * depth + name(span))
            walk(span.context.span_id, depth + 1)

    walk(None, 0)
    return "\n".join(lines)


def wait_for_spans(
    exporter: InMemorySpanExporter,
    predicate: Callable[[Sequence[ReadableSpan]], bool],
    timeout: float = 20.0,
) -> tuple[ReadableSpan, ...]:
    """The finished spans once ``predicate`` holds; AssertionError with what arrived after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        spans = exporter.get_finished_spans()
        if predicate(spans):
            return tuple(spans)
        if time.monotonic() > deadline:
            raise AssertionError(f"spans did not arrive in {timeout}s; got {[s.name for s in spans]}")
        time.sleep(0.02)
