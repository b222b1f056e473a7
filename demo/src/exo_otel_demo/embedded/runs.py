"""Run APIs: the run list, the state graph of a run, and one state's details."""

from __future__ import annotations

import re

from exo_otel_demo.embedded.errors import BadRequest, NotFound
from exo_otel_demo.embedded.models import (
    FAILED_STATUSES,
    PENDING_STATUSES,
    SUCCEEDED_STATUSES,
    JsonDict,
    State,
    StateStatus,
    isoformat,
)
from exo_otel_demo.embedded.store import Database, run_status

_OBJECT_ID = re.compile(r"^[0-9a-fA-F]{24}$")


def list_runs(db: Database, namespace: str, page: int, size: int) -> JsonDict:
    """One page (from 1) of the namespace's runs, newest first, with counts per kind of status."""
    # Upstream skips (page - 1) * size runs and returns at most size. Its database (the in-memory one
    # the real server runs on here) takes a negative skip as that many runs from the end (the oldest),
    # a size of 0 as no limit, and a negative size as its absolute value.
    offset = (page - 1) * size
    limit = abs(size) if size else None
    with db.lock:
        runs = [run for run in db.runs.values() if run.namespace == namespace]
        # Newest first; runs created in the same millisecond in the order they were triggered (as
        # upstream's database sorts them: a stable sort).
        ordered = sorted(runs, key=lambda run: run.created_at, reverse=True)
        selected = ordered[offset:] if limit is None else ordered[offset:][:limit]
        items = []
        for run in selected:
            states = db.states_of_run(run.run_id)
            items.append({
                "run_id": run.run_id,
                "graph_name": run.graph_name,
                "success_count": sum(s.status in SUCCEEDED_STATUSES for s in states),
                "pending_count": sum(s.status in PENDING_STATUSES for s in states),
                "errored_count": sum(s.status in FAILED_STATUSES for s in states),
                "retried_count": sum(s.status == StateStatus.RETRY_CREATED for s in states),
                "total_count": len(states),
                "status": run_status(states).value,
                "created_at": isoformat(run.created_at),
            })
        return {"namespace": namespace, "total": len(runs), "page": page, "size": size, "runs": items}


def _graph_node(state: State) -> JsonDict:
    return {"id": state.id, "node_name": state.node_name, "identifier": state.identifier,
            "status": state.status.value, "error": state.error}


def graph_structure(db: Database, namespace: str, run_id: str) -> JsonDict:
    """The states of a run as a graph; each state is joined to its direct (last) parent."""
    with db.lock:
        states = [s for s in db.states_of_run(run_id) if s.namespace == namespace]
        ids = {state.id for state in states}
        nodes = [_graph_node(state) for state in states]
        roots = [_graph_node(state) for state in states if not state.parents]
        edges = []
        for state in states:
            if state.parents:
                direct = list(state.parents.values())[-1]
                if direct in ids:
                    edges.append({"source": direct, "target": state.id})
        summary = {status.value: 0 for status in StateStatus}
        for state in states:
            summary[state.status.value] += 1
        return {
            "root_states": roots,
            "graph_name": states[0].graph_name if states else "",
            "nodes": nodes,
            "edges": edges,
            "node_count": len(nodes),
            "edge_count": len(edges),
            "execution_summary": summary,
        }


def node_details(db: Database, namespace: str, graph_name: str, run_id: str, state_id: str) -> JsonDict:
    """Everything about one state of a run."""
    if not _OBJECT_ID.match(state_id):
        raise BadRequest(f"Invalid node ID format: {state_id}")
    with db.lock:
        state = db.states.get(state_id)
        if (state is None or state.run_id != run_id or state.graph_name != graph_name
                or state.namespace != namespace):
            raise NotFound(f"Node {state_id} not found in run {run_id} for graph {graph_name}")
        return {
            "id": state.id,
            "node_name": state.node_name,
            "identifier": state.identifier,
            "graph_name": state.graph_name,
            "run_id": state.run_id,
            "status": state.status.value,
            "inputs": dict(state.inputs),
            "outputs": dict(state.outputs),
            "error": state.error,
            "parents": dict(state.parents),
            "created_at": isoformat(state.created_at),
            "updated_at": isoformat(state.updated_at),
        }
