"""The in-memory database: records by key, one lock, and read-only copies for inspection."""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from datetime import datetime

from exo_otel_demo.embedded.models import (
    FAILED_STATUSES,
    PENDING_STATUSES,
    GraphTemplate,
    JsonDict,
    RegisteredNode,
    Run,
    RunStatus,
    State,
    StateStatus,
    StatusChange,
)


@dataclass(frozen=True)
class StateView:
    """A copy of a state record, taken under the lock; changing it changes nothing on the server."""

    id: str
    node_name: str
    namespace: str
    identifier: str
    graph_name: str
    run_id: str
    status: StateStatus
    inputs: JsonDict
    outputs: JsonDict
    data: JsonDict
    error: str | None
    parents: dict[str, str]
    does_unites: bool
    enqueue_after: int
    retry_count: int
    fanout_id: str
    created_at: datetime
    updated_at: datetime
    history: tuple[StatusChange, ...]

    @property
    def statuses(self) -> list[StateStatus]:
        """The statuses the state went through, in order."""
        return [change.status for change in self.history]

    @classmethod
    def of(cls, state: State) -> StateView:
        return cls(
            id=state.id,
            node_name=state.node_name,
            namespace=state.namespace,
            identifier=state.identifier,
            graph_name=state.graph_name,
            run_id=state.run_id,
            status=state.status,
            inputs=copy.deepcopy(state.inputs),
            outputs=copy.deepcopy(state.outputs),
            data=copy.deepcopy(state.data),
            error=state.error,
            parents=dict(state.parents),
            does_unites=state.does_unites,
            enqueue_after=state.enqueue_after,
            retry_count=state.retry_count,
            fanout_id=state.fanout_id,
            created_at=state.created_at,
            updated_at=state.updated_at,
            history=tuple(state.history),
        )


def run_status(states: list[State]) -> RunStatus:
    """Upstream's rule: PENDING while a state is still to run, else FAILED when one failed for good,
    else SUCCESS; a run without states counts as FAILED."""
    if any(state.status in PENDING_STATUSES for state in states):
        return RunStatus.PENDING
    if not states or any(state.status in FAILED_STATUSES for state in states):
        return RunStatus.FAILED
    return RunStatus.SUCCESS


class Database:
    """All records of one embedded state manager.

    Every read and write happens under ``lock``: request handlers run on the server's event loop,
    while tests and synchronous callers inspect from other threads. No code awaits while holding it.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.nodes: dict[tuple[str, str], RegisteredNode] = {}
        self.graphs: dict[tuple[str, str], GraphTemplate] = {}
        self.states: dict[str, State] = {}
        # States by run, in creation order: runs are looked up on every report and status query.
        self.run_states: dict[str, list[State]] = {}
        self.runs: dict[str, Run] = {}
        # Keys of uniting states already created: a uniting node is created at most once per lineage.
        self.unites_keys: set[tuple[str, ...]] = set()
        # The states that may be CREATED, by namespace, in the order they were stored: what enqueue
        # looks through (not every state ever stored). States that left CREATED are dropped lazily.
        self._created: dict[str, dict[str, State]] = {}
        self._stored_at: dict[str, int] = {}

    def add_state(self, state: State) -> None:
        self._stored_at[state.id] = len(self._stored_at)
        self.states[state.id] = state
        self.run_states.setdefault(state.run_id, []).append(state)
        if state.status == StateStatus.CREATED:
            self.created_again(state)

    def created_again(self, state: State) -> None:
        """Note that a stored state is CREATED (again): enqueue hands it out in storage order."""
        waiting = self._created.setdefault(state.namespace, {})
        if state.id in waiting:
            return
        last = next(reversed(waiting), None)
        waiting[state.id] = state
        if last is not None and self._stored_at[last] > self._stored_at[state.id]:
            # Back to CREATED after later states were stored: it keeps its place among them.
            ordered = sorted(waiting.values(), key=lambda s: self._stored_at[s.id])
            self._created[state.namespace] = {s.id: s for s in ordered}

    def created_states(self, namespace: str) -> list[State]:
        """The namespace's CREATED states, in storage order (due or not)."""
        waiting = self._created.get(namespace, {})
        for state_id in [i for i, s in waiting.items() if s.status != StateStatus.CREATED]:
            del waiting[state_id]
        return list(waiting.values())

    def states_of_run(self, run_id: str) -> list[State]:
        return list(self.run_states.get(run_id, ()))

    # Read-only inspection, for tests and tools. Each call returns fresh copies.

    def state_views(self, run_id: str | None = None) -> list[StateView]:
        with self.lock:
            states = self.states.values() if run_id is None else self.run_states.get(run_id, [])
            return [StateView.of(state) for state in states]

    def state_view(self, state_id: str) -> StateView | None:
        with self.lock:
            state = self.states.get(state_id)
            return None if state is None else StateView.of(state)

    def node_names(self, namespace: str) -> set[str]:
        with self.lock:
            return {name for ns, name in self.nodes if ns == namespace}

    def run_ids(self) -> list[str]:
        with self.lock:
            return list(self.runs)

    def run_status_of(self, run_id: str) -> RunStatus | None:
        with self.lock:
            if run_id not in self.runs:
                return None
            return run_status(self.states_of_run(run_id))

    def graph_json(self, namespace: str, name: str, stored_settings: bool = True) -> JsonDict | None:
        with self.lock:
            graph = self.graphs.get((namespace, name))
            return None if graph is None else graph.to_json(stored_settings)
