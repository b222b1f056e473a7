"""Creation of the states that follow executed ones, including uniting nodes."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator

from exo_otel_demo.embedded.models import (
    PENDING_STATUSES,
    GraphTemplate,
    NodeTemplate,
    State,
    StateStatus,
    UnitesStrategy,
    ValidationStatus,
    new_object_id,
)
from exo_otel_demo.embedded.store import Database
from exo_otel_demo.embedded.templates import Placeholder, parse

logger = logging.getLogger(__name__)

# Statuses that let an ALL_SUCCESS uniting node go ahead: a retried state counts through its retry.
_ALL_SUCCESS_DONE = frozenset({StateStatus.SUCCESS, StateStatus.RETRY_CREATED})


class _Creation:
    """One round of next-state creation for the states one ``executed`` call left behind."""

    def __init__(
        self, db: Database, graph: GraphTemplate, identifier: str, parents: dict[str, State]
    ) -> None:
        self.db = db
        self.graph = graph
        self.identifier = identifier
        self.parents = parents

    def input_fields(self, template: NodeTemplate) -> list[str]:
        registered = self.db.nodes.get((template.namespace, template.node_name))
        if registered is None:
            raise ValueError(f"Registered node not found for node name: {template.node_name} and namespace: "
                             f"{template.namespace}")
        return registered.input_fields()

    def check_dependencies(self, template: NodeTemplate, fields: list[str]) -> None:
        for field in fields:
            if field not in template.inputs:
                raise ValueError(f"Field '{field}' not found in inputs for template '{template.identifier}'")
            for placeholder in parse(str(template.inputs[field])).placeholders:
                if placeholder.is_store or placeholder.source == self.identifier:
                    continue
                parent = self.parents.get(placeholder.source)
                if parent is None:
                    raise KeyError(f"Identifier '{placeholder.source}' not found in parents for template "
                                   f"'{template.identifier}'")
                if placeholder.field not in parent.outputs:
                    raise AttributeError(f"Output field '{placeholder.field}' not found on state "
                                         f"'{placeholder.source}' for template '{template.identifier}'")

    def store_value(self, run_id: str, key: str) -> str:
        run = self.db.runs.get(run_id)
        if run is not None and key in run.store:
            return run.store[key]
        if key in self.graph.store_config.default_values:
            return self.graph.store_config.default_values[key]
        raise ValueError(f"Store value not found for field '{key}' in namespace '{self.graph.namespace}' and "
                         f"graph '{self.graph.name}'")

    def new_state(self, template: NodeTemplate, fields: list[str], current: State) -> State:
        def lookup(placeholder: Placeholder) -> str:
            if placeholder.is_store:
                return self.store_value(current.run_id, placeholder.field)
            if placeholder.source == current.identifier:
                if placeholder.field not in current.outputs:
                    raise AttributeError(f"Output field '{placeholder.field}' not found on current state "
                                         f"'{current.identifier}' for template '{template.identifier}'")
                value: str = current.outputs[placeholder.field]
                return value
            # A missing output raises KeyError, whose text upstream stores as the error.
            parent_value: str = self.parents[placeholder.source].outputs[placeholder.field]
            return parent_value

        inputs = {field: parse(str(template.inputs[field])).render(lookup) for field in fields}
        return State(
            id=new_object_id(), node_name=template.node_name, namespace=template.namespace,
            identifier=template.identifier, graph_name=current.graph_name, run_id=current.run_id,
            status=StateStatus.CREATED, inputs=inputs,
            parents={**current.parents, current.identifier: current.id},
            does_unites=template.unites is not None,
        )

    def unites_satisfied(self, template: NodeTemplate, parent_ids: dict[str, str]) -> bool:
        assert template.unites is not None
        united_id = parent_ids.get(template.unites.identifier)
        if united_id is None:
            raise ValueError(f"Unit identifier not found in parents: {template.unites.identifier}")
        united = self.db.states.get(united_id)
        # A state's parents are of its own run: only the united state's run can hold its lineage.
        lineage = self.db.run_states.get(united.run_id, ()) if united is not None else self.db.states.values()
        for state in lineage:
            if state.parents.get(template.unites.identifier) != united_id:
                continue
            if state.namespace != self.graph.namespace or state.graph_name != self.graph.name:
                continue
            strategy = template.unites.strategy
            if strategy == UnitesStrategy.ALL_SUCCESS and state.status not in _ALL_SUCCESS_DONE:
                return False
            if strategy == UnitesStrategy.ALL_DONE and state.status in PENDING_STATUSES:
                return False
        return True


def _unites_key(state: State) -> tuple[str, ...]:
    return (state.run_id, state.namespace, state.identifier, str(state.retry_count),
            json.dumps(state.parents, sort_keys=True))


STATES_PER_STEP = 1000
"""States handled per hold of the database lock, so a huge fan-out never holds it for long."""


def _steps[T](items: list[T]) -> Iterator[list[T]]:
    """``items`` in steps; between two steps (the lock released by then) the thread gives way, so that
    a thread waiting for the lock gets it: a lock is not fair, and the same thread would take it again."""
    for start in range(0, len(items), STATES_PER_STEP):
        if start:
            time.sleep(0)
        yield items[start:start + STATES_PER_STEP]


def create_next_states(
    db: Database, state_ids: list[str], identifier: str, namespace: str, graph_name: str,
    parent_ids: dict[str, str],
) -> None:
    """Create the next states of ``state_ids`` (EXECUTED states of node ``identifier``), mark them
    SUCCESS, then create any uniting node whose wait is over. On failure the states are marked
    NEXT_CREATED_ERROR with the reason, and none of their next states is stored.

    The work goes ``STATES_PER_STEP`` states at a time, each step under the lock.
    """
    try:
        with db.lock:
            plan = _plan(db, state_ids, identifier, namespace, graph_name, parent_ids)
        if plan is None:
            for step in _steps(state_ids):
                with db.lock:
                    _mark_success(db, step)
            return
        creation, following, uniting = plan
        created: list[State] = []
        for step in _steps(state_ids):
            with db.lock:
                current = [db.states[state_id] for state_id in step]
                for template, fields in following:
                    created.extend(creation.new_state(template, fields, state) for state in current)
        for batch in _steps(created):
            with db.lock:
                for state in batch:
                    db.add_state(state)
        for step in _steps(state_ids):
            with db.lock:
                _mark_success(db, step)
        with db.lock:
            _unite(db, creation, uniting, parent_ids)
    except Exception as exc:  # any failure ends in NEXT_CREATED_ERROR, never in a stuck state
        reason = str(exc)  # as upstream stores it (a KeyError's text in quotes)
        logger.debug("next states of %s not created: %s", state_ids, reason)
        for step in _steps(state_ids):
            with db.lock:
                for state_id in step:
                    failed = db.states.get(state_id)
                    if failed is not None:
                        failed.error = reason
                        failed.set_status(StateStatus.NEXT_CREATED_ERROR)


def _mark_success(db: Database, state_ids: list[str]) -> None:
    for state_id in state_ids:
        db.states[state_id].set_status(StateStatus.SUCCESS)


_Plan = tuple[_Creation, list[tuple[NodeTemplate, list[str]]], list[NodeTemplate]]


def _plan(
    db: Database, state_ids: list[str], identifier: str, namespace: str, graph_name: str,
    parent_ids: dict[str, str],
) -> _Plan | None:
    """What to create after ``identifier``: the plain next nodes (with their input fields, dependencies
    checked) and the uniting ones; None when the node has no next node."""
    if not state_ids:
        raise ValueError("no states to continue from")
    graph = db.graphs.get((namespace, graph_name))
    if graph is None or graph.validation_status != ValidationStatus.VALID:
        raise ValueError(f"Graph {graph_name} in namespace {namespace} is missing or not valid")
    template = graph.node(identifier)
    if template is None:
        raise ValueError(f"Graph {graph_name} has no node {identifier}")
    if not template.next_nodes:
        return None
    parents = {db.states[pid].identifier: db.states[pid] for pid in parent_ids.values() if pid in db.states}
    creation = _Creation(db, graph, identifier, parents)
    following: list[tuple[NodeTemplate, list[str]]] = []
    uniting: list[NodeTemplate] = []
    for next_identifier in template.next_nodes:
        next_template = graph.node(next_identifier)
        if next_template is None:
            raise ValueError(f"Graph {graph_name} has no node {next_identifier}")
        if next_template.unites is not None:
            uniting.append(next_template)
            continue
        fields = creation.input_fields(next_template)
        creation.check_dependencies(next_template, fields)
        following.append((next_template, fields))
    return creation, following, uniting


def _unite(
    db: Database, creation: _Creation, uniting: list[NodeTemplate], parent_ids: dict[str, str]
) -> None:
    for next_template in uniting:
        if not creation.unites_satisfied(next_template, parent_ids):
            continue
        fields = creation.input_fields(next_template)
        creation.check_dependencies(next_template, fields)
        assert next_template.unites is not None
        united = creation.parents[next_template.unites.identifier]
        state = creation.new_state(next_template, fields, united)
        key = _unites_key(state)
        if key in db.unites_keys:
            continue  # another branch already completed the wait
        db.unites_keys.add(key)
        db.add_state(state)
