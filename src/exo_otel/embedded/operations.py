"""What each API call does to the database; synchronous, each under the database lock."""

from __future__ import annotations

from collections.abc import Callable

from exo_otel.embedded.bodies import RegisterNodesBody, TriggerBody, UpsertGraphBody
from exo_otel.embedded.errors import BadRequest, NotFound
from exo_otel.embedded.models import (
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
from exo_otel.embedded.next_states import create_next_states
from exo_otel.embedded.retry import compute_delay
from exo_otel.embedded.store import Database
from exo_otel.embedded.templates import Placeholder, TemplateError, parse
from exo_otel.embedded.validation import roots, validate

Job = Callable[[], None]


def register_nodes(db: Database, namespace: str, body: RegisterNodesBody) -> JsonDict:
    """Create or replace the registration of each node."""
    answer = []
    with db.lock:
        for node in body.nodes:
            db.nodes[(namespace, node.name)] = RegisteredNode(
                node.name, namespace, body.runtime_name, node.inputs_schema, node.outputs_schema, node.secrets
            )
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
    """Store the graph as PENDING; the returned job validates it (run it in the background)."""
    with db.lock:
        graph = db.graphs.get((namespace, name))
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
    answer = db.graph_json(namespace, name)
    if answer is None:
        raise NotFound(f"Graph {name} not found in namespace {namespace}")
    return answer


def _store_lookup(graph: GraphTemplate, body: TriggerBody, field: str) -> Callable[[Placeholder], str]:
    """Resolves the placeholders of root input ``field``: the trigger's store, then the defaults."""

    def lookup(placeholder: Placeholder) -> str:
        if not placeholder.is_store:
            raise BadRequest(
                f"Input {field} of the root node reads {placeholder.source}: only store "
                "placeholders can be resolved when a run starts"
            )
        if placeholder.field in body.store:
            return body.store[placeholder.field]
        if placeholder.field in graph.store_config.default_values:
            return graph.store_config.default_values[placeholder.field]
        raise BadRequest(f"Store key {placeholder.field} for root input {field} is not given, no default")

    return lookup


def _root_inputs(graph: GraphTemplate, body: TriggerBody) -> dict[str, str]:
    """Root inputs: the trigger's input of the same name if given, else the template, resolved."""
    inputs: dict[str, str] = {}
    for field, template_value in roots(graph.nodes)[0].inputs.items():
        raw = body.inputs.get(field, template_value)
        try:
            inputs[field] = parse(str(raw)).render(_store_lookup(graph, body, field))
        except TemplateError as exc:
            raise BadRequest(f"Input {field} of the root node is not a valid template: {exc}") from None
    return inputs


def trigger(db: Database, namespace: str, name: str, body: TriggerBody) -> JsonDict:
    """Start a run: a Run record, its store, and one CREATED root state."""
    with db.lock:
        graph = db.graphs.get((namespace, name))
        if graph is None:
            raise NotFound(f"Graph {name} not found in namespace {namespace}")
        if graph.validation_status != ValidationStatus.VALID:
            raise BadRequest(f"Graph {name} is not valid (validation status {graph.validation_status.value})")
        inputs = _root_inputs(graph, body)
        missing = sorted(set(graph.store_config.required_keys) - set(body.store))
        if missing:
            raise BadRequest(f"Required store keys missing: {', '.join(missing)}")
        run_id = new_run_id()
        db.runs[run_id] = Run(run_id, namespace, name, dict(body.store))
        root = roots(graph.nodes)[0]
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
        for state in db.states.values():
            if len(claimed) >= batch_size:
                break
            if (
                state.status != StateStatus.CREATED
                or state.namespace != namespace
                or state.node_name not in wanted
                or state.enqueue_after > moment
            ):
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
                item.update(run_id=state.run_id, graph_name=state.graph_name, parents=dict(state.parents))
            claimed.append(item)
    return {
        "count": len(claimed),
        "namespace": namespace,
        "status": StateStatus.QUEUED.value,
        "states": claimed,
    }


def _state(db: Database, state_id: str) -> State:
    state = db.states.get(state_id)
    if state is None:
        raise NotFound(f"State {state_id} not found")
    return state


def _require_queued(state: State) -> None:
    if state.status != StateStatus.QUEUED:
        raise BadRequest(f"State {state.id} is {state.status.value}, not QUEUED")


def executed(db: Database, state_id: str, outputs: list[JsonDict]) -> tuple[JsonDict, Job]:
    """Mark a state EXECUTED, one copy per extra output; the job creates what comes next."""
    with db.lock:
        state = _state(db, state_id)
        _require_queued(state)
        state.outputs = dict(outputs[0]) if outputs else {}
        state.set_status(StateStatus.EXECUTED)
        ids = [state.id]
        for output in outputs[1:]:
            copy = state.derive(StateStatus.EXECUTED, outputs=dict(output))
            db.add_state(copy)
            ids.append(copy.id)
        identifier, namespace, graph_name = state.identifier, state.namespace, state.graph_name
        parents = dict(state.parents)
    job = lambda: create_next_states(db, ids, identifier, namespace, graph_name, parents)  # noqa: E731
    return {"status": StateStatus.EXECUTED.value}, job


def errored(db: Database, state_id: str, error: str) -> JsonDict:
    """Record a failure; retry while the graph's policy allows, else ERRORED for good."""
    with db.lock:
        state = _state(db, state_id)
        _require_queued(state)
        graph = db.graphs.get((state.namespace, state.graph_name))
        if graph is None:
            raise NotFound(f"Graph {state.graph_name} of state {state_id} not found")
        retry_created = state.retry_count < graph.retry_policy.max_retries
        state.error = error
        state.set_status(StateStatus.RETRY_CREATED if retry_created else StateStatus.ERRORED)
        if retry_created:
            # The retry's delay counts from the moment the failure was recorded.
            delay = compute_delay(graph.retry_policy, state.retry_count + 1)
            db.add_state(
                state.derive(
                    StateStatus.CREATED,
                    does_unites=state.does_unites,
                    enqueue_after=state.history[-1].at_ms + delay,
                    retry_count=state.retry_count + 1,
                    fanout_id=state.fanout_id,
                )
            )
    return {"status": StateStatus.ERRORED.value, "retry_created": retry_created}


def prune(db: Database, state_id: str, data: JsonDict) -> JsonDict:
    """End a branch: PRUNED, with the data kept; nothing is created downstream."""
    with db.lock:
        state = _state(db, state_id)
        _require_queued(state)
        state.data = dict(data)
        state.set_status(StateStatus.PRUNED)
        return {"status": StateStatus.PRUNED.value, "enqueue_after": state.enqueue_after}


def re_enqueue_after(db: Database, state_id: str, delay_ms: int) -> JsonDict:
    """Put the same state back to CREATED, due ``delay_ms`` from now."""
    with db.lock:
        state = _state(db, state_id)
        state.set_status(StateStatus.CREATED)
        state.enqueue_after = state.history[-1].at_ms + delay_ms
        return {"status": StateStatus.CREATED.value, "enqueue_after": state.enqueue_after}


def get_secrets(db: Database, namespace: str, state_id: str) -> JsonDict:
    with db.lock:
        state = db.states.get(state_id)
        if state is None or state.namespace != namespace:
            raise NotFound(f"State {state_id} not found in namespace {namespace}")
        graph = db.graphs.get((namespace, state.graph_name))
        if graph is None:
            raise NotFound(f"Graph {state.graph_name} of state {state_id} not found")
        return {"secrets": dict(graph.secrets)}
