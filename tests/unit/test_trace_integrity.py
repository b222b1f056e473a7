"""The tests' one reference check (`helpers.trace_checks.integrity`) finds what it is there to find."""

from __future__ import annotations

from helpers.otlp_receiver import Span
from helpers.trace_checks import integrity

TRACE = "0af7651916cd43dd8448eb211c80319c"
OTHER_TRACE = "1af7651916cd43dd8448eb211c80319c"


def _span(span_id: str, parent: str | None = None, links: list[tuple[str, str]] | None = None,
          trace_id: str = TRACE) -> Span:
    return Span(trace_id=trace_id, span_id=span_id, parent_span_id=parent, name=f"s {span_id}", kind=1,
                attributes={}, links=links or [], status_code=0, status_message="", start_ns=0, end_ns=0,
                service_name=None)


def test_a_whole_trace_has_nothing_to_report() -> None:
    spans = [_span("a" * 16), _span("b" * 16, "a" * 16), _span("c" * 16, "a" * 16, [(TRACE, "b" * 16)])]
    found = integrity(spans)
    assert found.whole and found.problems == []


def test_duplicates_dangling_parents_and_links_are_counted() -> None:
    spans = [
        _span("a" * 16), _span("a" * 16),  # one id twice
        _span("b" * 16, "f" * 16),  # its parent was never emitted
        _span("c" * 16, "a" * 16, [(TRACE, "e" * 16), (OTHER_TRACE, "a" * 16)]),  # neither target exists
    ]
    found = integrity(spans)
    assert (found.duplicate_span_ids, found.dangling_parents, found.dangling_links) == (1, 1, 2)
    assert not found.whole
    assert len(found.problems) == 4


def test_a_parent_in_another_trace_dangles() -> None:
    found = integrity([_span("a" * 16), _span("b" * 16, "a" * 16, trace_id=OTHER_TRACE)])
    assert found.dangling_parents == 1
