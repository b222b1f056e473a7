"""What each API call does to the database; synchronous, each under the database lock."""

from __future__ import annotations

import time
from collections.abc import Callable

from exo_otel.server.context import run_fields
from exo_otel_demo.embedded.bodies import RegisterNodesBody, TriggerBody, UpsertGraphBody
from exo_otel_demo.embedded.documents import object_id, storable
from exo_otel_demo.embedded.errors import BadRequest, InternalError, NotFound
from exo_otel_demo.embedded.graph_checks import GraphInvalid, check_graph, root_of
from exo_otel_demo.embedded.models import (
    GraphTemplate,
    JsonDict,
    RegisteredNode,
    Run,
    State,
    StateStatus,
    ValidationStatus,
    isoformat,
    new_object_id,
    new_run_id,
    now,
    now_ms,
)
from exo_otel_demo.embedded.next_states import create_next_states
from exo_otel_demo.embedded.store import Database
from exo_otel_demo.embedded.templates import Placeholder, TemplateError, parse
from exo_otel_demo.embedded.validation import validate

Job = Callable[[], None]
COPIES_PER_STEP = 1000


def register_nodes(db: Database, namespace: str, body: RegisterNodesBody) -> JsonDict:
    """Create or replace the registration of each node."""
    answer = []
    with db.lock:
        for node in body.nodes:
            record = RegisteredNode(
                node.name, namespace, body.runtime_name, node.inputs_schema, node.outputs_schema, node.secrets
            )
            if not storable({"inputs_schema": node.inputs_schema, "outputs_schema": node.outputs_schema}):
                raise InternalError()  # the nodes before this one stay registered, as upstream's do
            known = db.nodes.get((namespace, node.name))
            if known is not None:  # upstream updates the record in place: same id, same creation time
                record.id, record.created_at = known.id, known.created_at
            db.nodes[(namespace, node.name)] = record
            answer.append(
                {
                    "name": node.name,
                    "inputs_schema": node.inputs_schema,
                    "outputs_schema": node.outputs_schema,
                    "secrets": node.secrets,
                }
            )
    return {"runtime_name": body.runtime_name, "registered_nodes": answer}


def upsert_graph(db: Database, namespace: str, name: str, body: UpsertGraphBody) -> tuple[JsonDict, Job]:
    """Store the graph as PENDING; the returned job validates it (run it in the background).

    Raises:
        BadRequest: upstream's 400 for a graph whose structure or placeholders it refuses.
    """
    with db.lock:
        graph = db.graphs.get((namespace, name))
        try:
            check_graph(name, namespace, body.nodes, list(body.secrets), body.retry_policy, body.store_config,
                        body.triggers, replacing=None if graph is None else graph.id)
        except GraphInvalid as exc:
            raise BadRequest(exc.detail) from None
        if not storable({"nodes": [node.to_json() for node in body.nodes], "triggers": body.triggers}):
            raise InternalError()
        moment = now()
        if graph is None:
            graph = GraphTemplate(
                name,
                namespace,
                body.nodes,
                body.secrets,
                body.retry_policy,
                body.store_config,
                body.triggers,
                created_at=moment,
                updated_at=moment,
            )
            db.graphs[(namespace, name)] = graph
        else:
            graph.nodes, graph.secrets, graph.triggers = body.nodes, body.secrets, body.triggers
            graph.retry_policy, graph.store_config = body.retry_policy, body.store_config
            graph.validation_status, graph.validation_errors = ValidationStatus.PENDING, []
            graph.updated_at = moment
            graph.revision += 1
        answer = graph.to_json()
        revision = graph.revision
    return answer, lambda: validate_graph(db, namespace, name, revision)


def validate_graph(db: Database, namespace: str, name: str, revision: int) -> None:
    """Mark the graph VALID or INVALID, unless another upsert replaced it meanwhile."""
    with db.lock:
        graph = db.graphs.get((namespace, name))
        if graph is None or graph.revision != revision:
            return
        try:
            errors = validate(graph, db.nodes)
        except Exception as exc:  # a validator bug must not leave the graph PENDING forever
            errors = [f"Validation failed unexpectedly: {exc}"]
        graph.validation_status = ValidationStatus.INVALID if errors else ValidationStatus.VALID
        graph.validation_errors = errors
        graph.updated_at = now()


def get_graph(db: Database, namespace: str, name: str) -> JsonDict:
    """The graph as upstream answers it: default retry policy, store config and triggers."""
    answer = db.graph_json(namespace, name, stored_settings=False)
    if answer is None:
        raise NotFound(f"Graph template {name} not found in namespace {namespace}")
    return answer


def _store_lookup(graph: GraphTemplate, body: TriggerBody, root: str) -> Callable[[Placeholder], str]:
    """Resolves the placeholders of a root input: the trigger's store, then the defaults."""

    def lookup(placeholder: Placeholder) -> str:
        if not placeholder.is_store:
            raise BadRequest(
                f"Root node can have only store identifier as dependent but got {placeholder.source}"
            )
        if placeholder.field in body.store:
            return body.store[placeholder.field]
        if placeholder.field in graph.store_config.default_values:
            return graph.store_config.default_values[placeholder.field]
        raise BadRequest(f"Dependent {placeholder.field} not found in store for root node {root}")

    return lookup


def _root_inputs(graph: GraphTemplate, body: TriggerBody) -> dict[str, str]:
    """Root inputs: the trigger's input of the same name if given, else the template, resolved."""
    root = root_of(graph.nodes)
    inputs: dict[str, str] = {}
    for field, template_value in root.inputs.items():
        raw = body.inputs.get(field, template_value)
        try:
            inputs[field] = parse(str(raw)).render(_store_lookup(graph, body, root.identifier))
        except BadRequest as exc:  # upstream wraps its own 400 in another one, status code and all
            raise BadRequest(f"Invalid input: 400: {exc.detail}") from None
        except TemplateError as exc:
            raise BadRequest(f"Invalid input: {exc}") from None
    return inputs


def _missing_keys_text(missing: list[str]) -> str:
    """Upstream prints the set of missing keys, e.g. ``{'a', 'b'}`` (its order is not fixed)."""
    return "{" + ", ".join(repr(key) for key in missing) + "}"


def trigger(db: Database, namespace: str, name: str, body: TriggerBody) -> JsonDict:
    """Start a run: a Run record, its store, and one CREATED root state."""
    with db.lock:
        graph = db.graphs.get((namespace, name))
        if graph is None:
            raise NotFound(f"Graph template not found for namespace {namespace} and graph {name}")
        if graph.validation_status != ValidationStatus.VALID:
            raise BadRequest("Graph template is not valid")
        inputs = _root_inputs(graph, body)
        missing = sorted(set(graph.store_config.required_keys) - set(body.store))
        if missing:
            raise BadRequest(f"Missing store keys: {_missing_keys_text(missing)}")
        run_id = new_run_id()
        db.runs[run_id] = Run(run_id, namespace, name, dict(body.store))
        root = root_of(graph.nodes)
        db.add_state(
            State(
                id=new_object_id(),
                node_name=root.node_name,
                namespace=namespace,
                identifier=root.identifier,
                graph_name=name,
                run_id=run_id,
                status=StateStatus.CREATED,
                inputs=inputs,
                enqueue_after=now_ms() + body.start_delay,
            )
        )
    return {"status": StateStatus.CREATED.value, "run_id": run_id}


def enqueue(
    db: Database, namespace: str, nodes: list[str], batch_size: int, expose_run_context: bool
) -> JsonDict:
    """Claim up to ``batch_size`` due CREATED states of the given nodes; each is handed out once."""
    wanted = set(nodes)
    claimed: list[JsonDict] = []
    with db.lock:
        moment = now_ms()
        for state in db.created_states(namespace):
            if len(claimed) >= batch_size:
                break
            if state.node_name not in wanted or state.enqueue_after > moment:
                continue
            state.set_status(StateStatus.QUEUED)
            item: JsonDict = {
                "state_id": state.id,
                "node_name": state.node_name,
                "identifier": state.identifier,
                "inputs": dict(state.inputs),
                "created_at": isoformat(state.created_at),
            }
            if expose_run_context:
                item.update(run_fields(state.run_id, state.graph_name, state.parents))
            claimed.append(item)
    return {
        "count": len(claimed),
        "namespace": namespace,
        "status": StateStatus.QUEUED.value,
        "states": claimed,
    }


def find_state(db: Database, state_id: str) -> State:
    """The state with this id; upstream's 500 for an id that is no ObjectId, 404 for an unknown one."""
    state = db.states.get(object_id(state_id))
    if state is None:
        raise NotFound("State not found")
    return state


def _require_queued(state: State) -> None:
    if state.status != StateStatus.QUEUED:
        raise BadRequest("State is not queued")


def executed(db: Database, state_id: str, outputs: list[JsonDict]) -> tuple[JsonDict, Job]:
    """Mark a state EXECUTED, one copy per extra output; the job creates what comes next.

    Copies are made and stored ``COPIES_PER_STEP`` at a time, each step under the lock, so that one
    huge fan-out never holds the database for long (run it on a worker thread).
    """
    with db.lock:
        state = find_state(db, state_id)
        _require_queued(state)
        if outputs and not storable({"outputs": outputs[0]}):
            raise InternalError()  # the database refuses the state: it stays QUEUED
        state.outputs = dict(outputs[0]) if outputs else {}
        state.set_status(StateStatus.EXECUTED)
        identifier, namespace, graph_name = state.identifier, state.namespace, state.graph_name
        parents = dict(state.parents)
    if not all(storable({"outputs": output}) for output in outputs[1:]):
        raise InternalError()  # upstream's copies fail to insert: EXECUTED, and nothing comes next
    ids = [state.id]
    for start in range(1, len(outputs), COPIES_PER_STEP):
        time.sleep(0)  # give way between steps: the lock is not fair (see next_states._steps)
        copies = [state.derive(StateStatus.EXECUTED, outputs=dict(output))
                  for output in outputs[start:start + COPIES_PER_STEP]]
        with db.lock:
            for copy in copies:
                db.add_state(copy)
        ids.extend(copy.id for copy in copies)
    job = lambda: create_next_states(db, ids, identifier, namespace, graph_name, parents)  # noqa: E731
    return {"status": StateStatus.EXECUTED.value}, job
