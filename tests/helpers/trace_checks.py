"""Whole-trace checks of runs against the state manager's own record of their states.

Spans from every process (the server's through OTLP, the test process's in memory) are flattened
to `otlp_receiver.Span`. `integrity` checks their references (the one such check of the tests);
`check_runs` measures what docs/trace-model.md, section "Traces never dangle", promises and returns
the numbers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

from exo_otel.core.ids import format_trace_id, outcome_span_id, run_span_id, state_span_id
from helpers.otlp_receiver import Span


def flatten(spans: Iterable[ReadableSpan], service: str = "test-process") -> list[Span]:
    rows = []
    for s in spans:
        assert s.context is not None
        rows.append(
            Span(
                trace_id=f"{s.context.trace_id:032x}",
                span_id=f"{s.context.span_id:016x}",
                parent_span_id=f"{s.parent.span_id:016x}" if s.parent is not None else None,
                name=s.name,
                kind=s.kind.value + 1,  # API SpanKind starts at 0 (internal); proto at 1
                attributes=dict(s.attributes or {}),
                links=[(f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}") for link in s.links],
                status_code=s.status.status_code.value,
                status_message=s.status.description or "",
                start_ns=s.start_time or 0,
                end_ns=s.end_time or 0,
                service_name=service,
                events=[e.name for e in s.events],
            )
        )
    return rows


@dataclass
class Integrity:
    """References inside a set of spans (docs/trace-model.md, section "Traces never dangle"): span ids
    emitted more than once, parents and link targets that are not among the spans. Of the copies, those
    that are the first one again (`same_span`) are counted apart: a span exported by a process killed
    before its claim was confirmed, emitted again by another (docs/state-manager-side.md, "Exactly
    once"), which a backend that deduplicates spans shows once."""

    duplicate_span_ids: int = 0
    redelivered_span_ids: int = 0  # of the duplicates, the copies identical to the first
    dangling_parents: int = 0
    dangling_links: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def whole(self) -> bool:
        return not (self.duplicate_span_ids or self.dangling_parents or self.dangling_links)


def integrity(spans: Sequence[Span]) -> Integrity:
    """The one reference check every test and load uses (over spans from any process, flattened)."""
    found = Integrity()
    ids = Counter((s.trace_id, s.span_id) for s in spans)
    found.duplicate_span_ids = sum(count - 1 for count in ids.values() if count > 1)
    first: dict[tuple[str, str], Span] = {}
    for span in spans:
        key = (span.trace_id, span.span_id)
        seen = first.setdefault(key, span)
        if seen is span:
            continue
        if same_span(seen, span):
            found.redelivered_span_ids += 1
        else:
            found.problems.append(f"span id emitted {ids[key]} times, not all the same span: {key}")
    for span in spans:
        if span.parent_span_id is not None and (span.trace_id, span.parent_span_id) not in ids:
            found.dangling_parents += 1
            found.problems.append(f"dangling parent: {span.name} {span.trace_id}/{span.parent_span_id}")
        for link in span.links:
            if link not in ids:
                found.dangling_links += 1
                found.problems.append(f"dangling link: {span.name} -> {link}")
    return found


def same_span(a: Span, b: Span) -> bool:
    """The same span emitted twice: everything the span says is equal (which process sent it, and when it
    was received, aside)."""
    return (a.trace_id, a.span_id, a.parent_span_id, a.name, a.kind, a.attributes, a.links, a.status_code,
            a.status_message, a.start_ns, a.end_ns, a.events) == (
        b.trace_id, b.span_id, b.parent_span_id, b.name, b.kind, b.attributes, b.links, b.status_code,
        b.status_message, b.start_ns, b.end_ns, b.events)


def once(spans: Sequence[Span]) -> list[Span]:
    """The spans with identical copies (`same_span`) left out: what a backend that deduplicates shows."""
    first: dict[tuple[str, str], list[Span]] = {}
    kept = []
    for span in spans:
        copies = first.setdefault((span.trace_id, span.span_id), [])
        if not any(same_span(copy, span) for copy in copies):
            copies.append(span)
            kept.append(span)
    return kept


@dataclass
class RunReport:
    """What docs/trace-model.md, section "Traces never dangle", promises, measured over a set of runs."""

    runs: int = 0
    states: int = 0
    placed: int = 0  # node span in the run's trace, parent = the run root
    roots_per_run: Counter[int] = field(default_factory=Counter)
    # The state manager side's outcome span (`settle {graph}`): per run, and those not under the root
    # or without the run's status.
    outcomes_per_run: Counter[int] = field(default_factory=Counter)
    outcomes_malformed: int = 0
    duplicate_span_ids: int = 0
    redelivered_span_ids: int = 0  # of the duplicates, the copies identical to the first (`Integrity`)
    dangling_parents: int = 0
    dangling_links: int = 0
    executes_misplaced: int = 0
    executes: int = 0
    # Per run: the outcome's end minus the last node span's end (how long after settling it ended).
    outcome_lag_ms: list[float] = field(default_factory=list)
    # Per run received over OTLP: when its root reached the receiver, after the trigger was handled.
    root_export_ms: list[float] = field(default_factory=list)
    # Per node span received over OTLP: when it reached the receiver, after its state ended (its end).
    node_export_ms: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def placed_percent(self) -> float:
        return 100.0 * self.placed / self.states if self.states else 0.0

    def summary(self) -> str:
        return (
            f"runs={self.runs} states={self.states} placed={self.placed_percent:.1f}% "
            f"roots/run={dict(self.roots_per_run)} outcomes/run={dict(self.outcomes_per_run)} "
            f"duplicate_ids={self.duplicate_span_ids} (identical copies {self.redelivered_span_ids}) "
            f"dangling_parents={self.dangling_parents} dangling_links={self.dangling_links} "
            f"executes={self.executes} executes_misplaced={self.executes_misplaced} "
            f"outcome_end_after_last_node_ms(p50/max)={_p50_max(self.outcome_lag_ms)} "
            f"root_exported_after_trigger_ms(p50/max)={_p50_max(self.root_export_ms)} "
            f"node_exported_after_state_end_ms(p50/p99/max)={_p50_p99_max(self.node_export_ms)}"
        )


def _p50_p99_max(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[len(ordered) // 2]:.0f}/{ordered[len(ordered) * 99 // 100]:.0f}/{ordered[-1]:.0f}"


def _p50_max(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[len(ordered) // 2]:.0f}/{ordered[-1]:.0f}"


def check_runs(
    spans: Sequence[Span], states_by_run: dict[str, list[dict[str, Any]]], graph_name: str
) -> RunReport:
    """``states_by_run``: each run's states as the debug route gives them (``state_id`` at least)."""
    references = integrity(spans)
    report = RunReport(
        runs=len(states_by_run), duplicate_span_ids=references.duplicate_span_ids,
        redelivered_span_ids=references.redelivered_span_ids,
        dangling_parents=references.dangling_parents, dangling_links=references.dangling_links,
        problems=references.problems,
    )
    by_trace: dict[str, list[Span]] = {}
    for span in once(spans):  # an identical copy is counted as a duplicate above, not as a second root
        by_trace.setdefault(span.trace_id, []).append(span)
    for run_id, states in states_by_run.items():
        trace = by_trace.get(format_trace_id(run_id), [])
        root_id = f"{run_span_id(run_id):016x}"
        roots = [s for s in trace if s.name == f"run {graph_name}" and s.span_id == root_id]
        report.roots_per_run[len(roots)] += 1
        report.root_export_ms.extend(
            (root.received_ns - root.start_ns) / 1e6 for root in roots if root.received_ns is not None
        )
        outcome_id = f"{outcome_span_id(run_id):016x}"
        outcomes = [s for s in trace if s.span_id == outcome_id]
        report.outcomes_per_run[len(outcomes)] += 1
        for outcome in outcomes:
            if (
                outcome.name != f"settle {graph_name}"
                or outcome.parent_span_id != root_id
                or "exosphere.run.status" not in outcome.attributes
            ):
                report.outcomes_malformed += 1
                report.problems.append(f"malformed outcome span of run {run_id}: {outcome}")
        node_ids = {s.span_id: s for s in trace if s.name.startswith("node ")}
        if len(outcomes) == 1 and node_ids:
            last_node_end = max(n.end_ns for n in node_ids.values())
            report.outcome_lag_ms.append((outcomes[0].end_ns - last_node_end) / 1e6)
        for state in states:
            report.states += 1
            node = node_ids.get(f"{state_span_id(state['state_id']):016x}")
            if node is not None and node.parent_span_id == root_id:
                report.placed += 1
                if node.received_ns is not None:
                    report.node_export_ms.append((node.received_ns - node.end_ns) / 1e6)
            else:
                report.problems.append(f"state {state['state_id']} ({state.get('identifier')}) not placed")
        for span in trace:
            if span.name.startswith("execute "):
                report.executes += 1
                if span.parent_span_id not in node_ids:
                    report.executes_misplaced += 1
    return report
