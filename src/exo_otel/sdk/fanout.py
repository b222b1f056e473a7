"""Spans for fan-out copies: states the state manager makes from extra outputs, which no runtime executes.

The executed answer does not name the copies; a run graph fetched after it does. The runtime asks
its run API placement for one (the worker never waits for it) and emits the copies' node spans when
it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any, Final

from opentelemetry import trace

from exo_otel.core import attributes as attr
from exo_otel.core.ids import state_span_id
from exo_otel.core.spans import end_span, start_span
from exo_otel.sdk.execution import Execution
from exo_otel.sdk.placement import PlacementMemory
from exo_otel.sdk.run_index import GraphNodes
from exo_otel.sdk.state_context import (
    RunInfo,
    link_to_state,
    parent_context,
    run_is_sampled,
    run_root_context,
)
from exo_otel.sdk.telemetry import Telemetry

# Statuses a fan-out copy can have: it is born EXECUTED and moves on as its next states are made.
_COPY_STATUSES: Final = frozenset({"EXECUTED", "SUCCESS", "NEXT_CREATED_ERROR"})


def fanout_copy_ids(graph: GraphNodes, state_id: str, identifier: str) -> list[str]:
    """Ids of the copies the state manager made of ``state_id`` when it reported several outputs.

    A copy has the original's identifier and direct parent; retries of the same state share them
    too but end RETRY_CREATED or ERRORED, and each parent makes one state per next node, so the
    executed states of that identifier under that parent are the original and its copies.
    """
    parent = graph.parent_of.get(state_id)
    return [
        node_id
        for node_id in graph.node_ids
        if graph.identifier_of.get(node_id) == identifier
        and graph.status_of.get(node_id) in _COPY_STATUSES
        and node_id != state_id
        and graph.parent_of.get(node_id) == parent
    ]


class FanOutsUnderWay:
    """Runs in which this runtime waits for a graph naming fan-out copies, so their spans are not out yet.

    A state whose direct upstream state this runtime does not know may be such a copy: while a fan-out
    of its run is under way here, no link to that upstream state is made (it might name a span that
    is never emitted, should the graph never come).
    """

    def __init__(self, ttl_s: float) -> None:
        self._ttl = ttl_s
        self._runs: dict[str, list[float]] = {}
        self._settled: dict[str, asyncio.Event] = {}

    def start(self, run_id: str) -> None:
        self._runs.setdefault(run_id, []).append(time.monotonic() + self._ttl)

    def done(self, run_id: str) -> None:
        deadlines = self._runs.get(run_id)
        if deadlines:
            deadlines.pop(0)
        if not deadlines:
            self._runs.pop(run_id, None)
            event = self._settled.pop(run_id, None)
            if event is not None:
                event.set()

    def under_way(self, run_id: str) -> bool:
        deadlines = self._runs.get(run_id)
        if not deadlines:
            return False
        now = time.monotonic()
        deadlines[:] = [d for d in deadlines if d > now]
        return bool(deadlines)

    async def wait(self, run_id: str, timeout: float) -> bool:
        """Wait at most ``timeout`` seconds until no fan-out of the run is under way; whether none is."""
        if not self.under_way(run_id) or timeout <= 0:
            return not self.under_way(run_id)
        event = self._settled.setdefault(run_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
        return not self.under_way(run_id)


@dataclass(frozen=True)
class FanOut:
    """What the copies' spans need of the original, kept once its execution is over."""

    telemetry: Telemetry
    memory: PlacementMemory
    state_id: str
    identifier: str
    attributes: dict[str, Any]
    original: trace.SpanContext
    start_ns: int
    under_way: FanOutsUnderWay

    @classmethod
    def of(cls, execution: Execution, memory: PlacementMemory, under_way: FanOutsUnderWay) -> FanOut:
        start = getattr(execution.node_span, "start_time", None) or execution.started_ns
        return cls(
            execution.telemetry,
            memory,
            execution.state.state_id,
            execution.state.identifier,
            # A copy is in a run: no namespace (only the root of a state's own trace carries it).
            {k: v for k, v in execution.attributes.items() if k != attr.NAMESPACE},
            execution.node_span.get_span_context(),
            int(start),
            under_way,
        )

    def emit(self, run_id: str, graph: GraphNodes) -> None:
        """One node span per copy in the run's trace: timed like the original's, linked to it."""
        self.under_way.done(run_id)
        end = time.time_ns()
        for copy_id in fanout_copy_ids(graph, self.state_id, self.identifier):
            if self.memory.get(copy_id) is not None:
                continue  # emitted already: no span id twice
            run = RunInfo(run_id, graph.graph_name, graph.parent_of.get(copy_id))
            sampled = run_is_sampled(self.telemetry.sampler, run)
            attributes = dict(self.attributes)
            attributes[attr.STATE_ID] = copy_id
            attributes[attr.STATE_FANOUT_OF] = self.state_id
            attributes[attr.STATE_OUTCOME] = attr.OUTCOME_EXECUTED
            span = start_span(
                self.telemetry.tracer,
                f"node {self.identifier}",
                context=parent_context(run_root_context(run, sampled)),
                span_id=state_span_id(copy_id),
                start_time=self.start_ns,
                attributes=attributes,
                links=link_to_state(self.original),
            )
            self.memory.remember(copy_id, run, span.get_span_context())
            end_span(span, end)
