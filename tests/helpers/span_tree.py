"""An indented dump of a trace's span tree, for shape assertions."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from opentelemetry.sdk.trace import ReadableSpan


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
