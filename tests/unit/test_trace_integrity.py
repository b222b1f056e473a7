"""The tests' one reference check (`helpers.trace_checks.integrity`) finds what it is there to find."""

from __future__ import annotations

import dataclasses

from helpers.otlp_receiver import Span
from helpers.trace_checks import integrity, once

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
        _span("a" * 16), dataclasses.replace(_span("a" * 16), end_ns=5),  # one id twice, not the same span
        _span("b" * 16, "f" * 16),  # its parent was never emitted
        _span("c" * 16, "a" * 16, [(TRACE, "e" * 16), (OTHER_TRACE, "a" * 16)]),  # neither target exists
    ]
    found = integrity(spans)
    assert (found.duplicate_span_ids, found.dangling_parents, found.dangling_links) == (1, 1, 2)
    assert found.redelivered_span_ids == 0
    assert not found.whole
    assert len(found.problems) == 4


def test_the_same_span_twice_is_a_duplicate_counted_as_a_redelivery_and_kept_once() -> None:
    root = _span("a" * 16)
    again = dataclasses.replace(root, service_name="another process", process_pid=7, received_ns=9)
    found = integrity([root, _span("b" * 16, "a" * 16), again])
    assert (found.duplicate_span_ids, found.redelivered_span_ids) == (1, 1)
    assert not found.whole and found.problems == []  # counted, not reported as two different spans
    later = dataclasses.replace(root, end_ns=5)
    assert once([root, again, later]) == [root, later]


def test_a_parent_in_another_trace_dangles() -> None:
    found = integrity([_span("a" * 16), _span("b" * 16, "a" * 16, trace_id=OTHER_TRACE)])
    assert found.dangling_parents == 1
