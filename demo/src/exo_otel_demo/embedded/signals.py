"""The calls that end or repeat one state: errored, prune, re-enqueue-after, manual retry; and secrets.

Each answers as upstream does, texts included: 404 ``State not found`` for an unknown id, upstream's
generic 500 for an id that is no ObjectId, 400 for a state in the wrong status.
"""

from __future__ import annotations

from exo_otel_demo.embedded.documents import NotAnObjectId, object_id, storable
from exo_otel_demo.embedded.errors import BadRequest, ConflictError, InternalError, NotFound
from exo_otel_demo.embedded.models import JsonDict, State, StateStatus
from exo_otel_demo.embedded.operations import find_state
from exo_otel_demo.embedded.retry import compute_delay
from exo_otel_demo.embedded.store import Database


def _fanout_key_taken(db: Database, state: State) -> bool:
    """Upstream's unique index: one state per node, run, retry count and fan-out id."""
    return any(
        other.retry_count == state.retry_count
        and other.fanout_id == state.fanout_id
        and other.identifier == state.identifier
        and other.node_name == state.node_name
        and other.namespace == state.namespace
        and other.graph_name == state.graph_name
        for other in db.run_states.get(state.run_id, ())
    )


def errored(db: Database, state_id: str, error: str) -> JsonDict:
    """Record a failure; retry while the graph's policy allows, else ERRORED for good."""
    with db.lock:
        state = find_state(db, state_id)
        if state.status == StateStatus.EXECUTED:
            raise BadRequest("State is already executed")
        if state.status != StateStatus.QUEUED:
            raise BadRequest("State is not queued or executed")
        graph = db.graphs.get((state.namespace, state.graph_name))
        if graph is None:
            raise NotFound("Graph template not found")
        retry_created = state.retry_count < graph.retry_policy.max_retries
        state.error = error
        state.set_status(StateStatus.RETRY_CREATED if retry_created else StateStatus.ERRORED)
        if retry_created:
            # The retry's delay counts from the moment the failure was recorded.
            retry = state.derive(
                StateStatus.CREATED,
                does_unites=state.does_unites,
                enqueue_after=state.history[-1].at_ms
                + compute_delay(graph.retry_policy, state.retry_count + 1),
                retry_count=state.retry_count + 1,
                fanout_id=state.fanout_id,
            )
            if not _fanout_key_taken(db, retry):  # upstream counts an existing retry as created
                db.add_state(retry)
    return {"status": StateStatus.ERRORED.value, "retry_created": retry_created}


def prune(db: Database, state_id: str, data: JsonDict) -> JsonDict:
    """End a branch: PRUNED, with the data kept; nothing is created downstream."""
    with db.lock:
        state = find_state(db, state_id)
        if state.status != StateStatus.QUEUED:
            raise BadRequest("State is not queued")
        if not storable({"data": data}):
            raise InternalError()  # the database refuses the state: it stays QUEUED
        state.data = dict(data)
        state.set_status(StateStatus.PRUNED)
        return {"status": StateStatus.PRUNED.value, "enqueue_after": state.enqueue_after}


def re_enqueue_after(db: Database, state_id: str, delay_ms: int) -> JsonDict:
    """Put the same state back to CREATED, due ``delay_ms`` from now (whatever its status: upstream's)."""
    with db.lock:
        state = find_state(db, state_id)
        state.set_status(StateStatus.CREATED)
        state.enqueue_after = state.history[-1].at_ms + delay_ms
        db.created_again(state)
        return {"status": StateStatus.CREATED.value, "enqueue_after": state.enqueue_after}


def manual_retry(db: Database, namespace: str, state_id: str, fanout_id: str) -> JsonDict:
    """A new CREATED copy of the state under the given fan-out id; the state becomes RETRY_CREATED.

    Like upstream: any status may be retried, the copy starts at retry count 0 and is due now, and a
    second retry with the same fan-out id is a 409.
    """
    with db.lock:
        state = find_state(db, state_id)
        if state.namespace != namespace:
            raise NotFound("State not found")
        retry = state.derive(StateStatus.CREATED, does_unites=state.does_unites, fanout_id=fanout_id)
        if _fanout_key_taken(db, retry):
            raise ConflictError("Duplicate retry state detected")
        db.add_state(retry)
        state.set_status(StateStatus.RETRY_CREATED)
        return {"id": retry.id, "status": StateStatus.CREATED.value}


def get_secrets(db: Database, namespace: str, state_id: str) -> JsonDict:
    """The secrets of the state's graph; upstream fails with its generic 500 on every problem."""
    with db.lock:
        try:
            state = db.states.get(object_id(state_id))
        except NotAnObjectId:
            raise InternalError() from None
        if state is None or state.namespace != namespace:
            raise InternalError()
        graph = db.graphs.get((namespace, state.graph_name))
        if graph is None:
            raise InternalError()
        return {"secrets": dict(graph.secrets)}
