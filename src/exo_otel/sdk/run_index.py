"""What the run APIs have said so far: which run each state is in, and which runs may hold states not seen.

Pure bookkeeping, no I/O: `RunApiPlacement` feeds it the answers of ``runs/{page}/{size}`` and
``states/run/{run_id}/graph`` with the (monotonic) time each request was sent, and asks it which call
is worth making next. States are never deleted from a run, so a run's graph fetched at time T holds
every state of the run that existed at T, and a runs page that shows the run's ``total_count`` equal
to the states indexed says the same as of the page's time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from exo_otel.core.lru import LruCache
from exo_otel.sdk.state_context import RunInfo


@dataclass
class RunRecord:
    """One run as the run APIs described it."""

    run_id: str
    graph_name: str | None = None
    indexed_count: int = -1
    """States in the last graph indexed; -1 when never fetched."""
    complete_at: float = float("-inf")
    """Every state of the run that existed at this time is indexed."""
    pending: bool = True
    """The last runs page showed states still CREATED, QUEUED or EXECUTED (or has not shown the run)."""
    grown_since: float | None = None
    """Time of the first runs page that showed more states than indexed; None when not known to grow."""
    graph_fetched_at: float = float("-inf")


@dataclass
class GraphNodes:
    """The parts of a run graph answer exo_otel reads."""

    graph_name: str | None
    node_ids: list[str]
    parent_of: dict[str, str]
    identifier_of: dict[str, str]
    status_of: dict[str, str] = field(default_factory=dict)


def read_graph(body: Any) -> GraphNodes | None:
    """The nodes and direct-parent edges of a run graph answer; None when it is not one."""
    if not isinstance(body, dict):
        return None
    nodes, edges = body.get("nodes"), body.get("edges")
    if not isinstance(nodes, list) or not isinstance(edges, list):
        return None
    graph = GraphNodes(text(body, "graph_name"), [], {}, {})
    # Upstream draws each edge from a state's direct parent (source) to the state (target).
    for edge in edges:
        source, target = text(edge, "source"), text(edge, "target")
        if source is not None and target is not None:
            graph.parent_of[target] = source
    for node in nodes:
        node_id = text(node, "id")
        if node_id is None:
            continue
        graph.node_ids.append(node_id)
        graph.identifier_of[node_id] = text(node, "identifier") or ""
        graph.status_of[node_id] = text(node, "status") or ""
    return graph


def read_runs_page(body: Any) -> list[tuple[str, dict[str, Any]]] | None:
    """The ``(run_id, item)`` pairs of a runs page, newest first; None when the body is not a runs page."""
    if not isinstance(body, dict) or not isinstance(body.get("runs"), list):
        return None
    return [(run_id, item) for item in body["runs"] if (run_id := text(item, "run_id")) is not None]


def text(item: Any, key: str) -> str | None:
    """``item[key]`` when item is a JSON object and the value a non-empty string."""
    if not isinstance(item, dict):
        return None
    value = item.get(key)
    return value if isinstance(value, str) and value else None


class RunIndex:
    """States to runs (bounded, least recently used evicted) and runs to what is known of them."""

    def __init__(self, max_states: int = 20_000, max_runs: int = 2_000) -> None:
        self.states: LruCache[str, RunInfo] = LruCache(max(1, max_states), on_evict=self._state_forgotten)
        self.runs: LruCache[str, RunRecord] = LruCache(max(1, max_runs))

    def known(self, state_id: str) -> RunInfo | None:
        return self.states.get(state_id)

    def record(self, run_id: str) -> RunRecord:
        run = self.runs.get(run_id)
        if run is None:
            run = RunRecord(run_id)
            self.runs.put(run_id, run)
        return run

    def _state_forgotten(self, _state_id: str, info: RunInfo) -> None:
        # That run's index is incomplete now: its graph must be fetched again to find the state.
        stale = self.runs.peek(info.run_id)
        if stale is not None:
            stale.indexed_count, stale.complete_at = -1, float("-inf")

    def note_page(self, items: list[tuple[str, dict[str, Any]]], sent_at: float) -> int:
        """Remember what a runs page says; the number of its runs still pending."""
        pending_runs = 0
        for run_id, item in items:
            run = self.record(run_id)
            run.graph_name = text(item, "graph_name") or run.graph_name
            pending_count = item.get("pending_count")
            if isinstance(pending_count, int):
                run.pending = pending_count > 0
            else:
                run.pending = item.get("status") == "PENDING"
            pending_runs += run.pending
            total = item.get("total_count")
            if not isinstance(total, int):
                run.grown_since = run.grown_since if run.grown_since is not None else sent_at
            elif total == run.indexed_count:
                run.complete_at = max(run.complete_at, sent_at)
                run.grown_since = None
            elif total > run.indexed_count and run.grown_since is None:
                run.grown_since = sent_at
        return pending_runs

    def index_graph(self, run_id: str, graph: GraphNodes, sent_at: float) -> None:
        """Remember every state of a run graph fetched at ``sent_at``."""
        run = self.record(run_id)
        run.graph_name = graph.graph_name or run.graph_name
        run.indexed_count = len(graph.node_ids)
        run.complete_at = max(run.complete_at, sent_at)
        run.graph_fetched_at = sent_at
        run.grown_since = None
        # After the run's own record: a state of this very run forgotten to make room marks it stale.
        for state_id in graph.node_ids:
            self.states.put(state_id, RunInfo(run_id, run.graph_name, graph.parent_of.get(state_id)))

    def expect_growth(self, run_id: str, at: float) -> None:
        """A state of the run was just reported done here: the state manager is making its next states."""
        run = self.record(run_id)
        run.pending = True
        if run.grown_since is None:
            run.grown_since = at

    def grown_runs(self) -> list[RunRecord]:
        """Pending runs known to hold states not indexed, the longest grown first (fairness)."""
        grown = [r for r in self.runs.values() if r.grown_since is not None and r.pending]
        grown.sort(key=lambda r: r.grown_since or 0.0)
        return grown

    def grown_settled_runs(self) -> list[RunRecord]:
        """Runs that settled with states not indexed (fetched once more, then never again)."""
        return [r for r in self.runs.values() if r.grown_since is not None and not r.pending]

    def unchecked_runs(self, since: float) -> list[RunRecord]:
        """Pending runs whose index may miss a state existing at ``since``; least recently fetched first."""
        runs = [r for r in self.runs.values() if r.pending and r.complete_at < since]
        runs.sort(key=lambda r: r.graph_fetched_at)
        return runs
