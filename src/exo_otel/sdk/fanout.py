"""Spans for fan-out copies: states the state manager makes from extra outputs, which no runtime executes."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Final

from exo_otel.core import attributes as attr
from exo_otel.core.ids import state_span_id
from exo_otel.core.spans import end_span, start_span
from exo_otel.sdk.execution import Execution
from exo_otel.sdk.state_context import parent_context, run_is_sampled, run_root_context, upstream_link

# Statuses a fan-out copy can have: it is born EXECUTED and moves on as its next states are made.
_COPY_STATUSES: Final = frozenset({"EXECUTED", "SUCCESS", "NEXT_CREATED_ERROR"})


def fanout_copy_ids(run_graph: Any, state_id: str, identifier: str) -> list[str]:
    """Ids of the copies the state manager made of ``state_id`` when it reported several outputs.

    A copy has the original's identifier and direct parent; retries of the same state share them
    too but end RETRY_CREATED or ERRORED, and each parent makes one state per next node, so the
    executed states of that identifier under that parent are the original and its copies.
    """
    if not isinstance(run_graph, dict):
        return []
    nodes, edges = run_graph.get("nodes"), run_graph.get("edges")
    if not isinstance(nodes, list) or not isinstance(edges, list):
        return []
    parent_of = {str(edge.get("target")): str(edge.get("source")) for edge in edges if isinstance(edge, dict)}
    parent = parent_of.get(state_id)
    return [
        str(node["id"])
        for node in nodes
        if isinstance(node, dict)
        and node.get("identifier") == identifier
        and node.get("status") in _COPY_STATUSES
        and node.get("id") != state_id
        and parent_of.get(str(node.get("id"))) == parent
    ]


def emit_copy_spans(execution: Execution, copy_ids: list[str]) -> None:
    """One node span per copy: timed like the original's, linked to it, outcome ``executed``."""
    state, run, telemetry = execution.state, execution.state.run, execution.telemetry
    if run is None or not copy_ids:
        return
    sampled = run_is_sampled(telemetry.sampler, run)
    parent = parent_context(run_root_context(run, sampled))
    # A copy's upstream, for the link, is the state it was copied from.
    to_original = upstream_link(replace(run, parent_state_id=state.state_id), sampled)
    start = getattr(execution.node_span, "start_time", None) or execution.started_ns
    end = time.time_ns()
    for copy_id in copy_ids:
        attributes = execution.common_attributes()
        attributes[attr.STATE_ID] = copy_id
        attributes[attr.STATE_FANOUT_OF] = state.state_id
        attributes[attr.STATE_OUTCOME] = attr.OUTCOME_EXECUTED
        span = start_span(
            telemetry.tracer,
            f"node {state.identifier}",
            context=parent,
            span_id=state_span_id(copy_id),
            start_time=start,
            attributes=attributes,
            links=to_original,
        )
        end_span(span, end)
