"""The embedded state manager's enqueue: upstream's order (storage order, each state handed out once),
looked for among the namespace's CREATED states only."""

from __future__ import annotations

from exo_otel_demo.embedded import operations, signals
from exo_otel_demo.embedded.models import State, StateStatus, new_object_id, now_ms
from exo_otel_demo.embedded.store import Database


def _store(db: Database, namespace: str, node: str, status: StateStatus = StateStatus.CREATED) -> str:
    state = State(id=new_object_id(), node_name=node, namespace=namespace, identifier=node.lower(),
                  graph_name="g", run_id="run", status=status, inputs={})
    db.add_state(state)
    return state.id


def _claim(db: Database, namespace: str, nodes: list[str], batch_size: int = 100) -> list[str]:
    answer = operations.enqueue(db, namespace, nodes, batch_size, expose_run_context=False)
    assert answer["count"] == len(answer["states"])
    return [s["state_id"] for s in answer["states"]]


def test_states_are_handed_out_once_in_storage_order_per_namespace_and_node() -> None:
    db = Database()
    stored = [_store(db, "ns", "A" if i % 3 else "B") for i in range(30)]
    other = [_store(db, "other", "A") for _ in range(5)]
    _store(db, "ns", "A", StateStatus.EXECUTED)

    first = _claim(db, "ns", ["A"], batch_size=7)
    assert first == [s for i, s in enumerate(stored) if i % 3][:7]
    rest = _claim(db, "ns", ["A", "B"])
    assert rest == [s for s in stored if s not in first]
    assert _claim(db, "ns", ["A", "B"]) == []
    assert _claim(db, "other", ["A"]) == other
    statuses = {view.id: view.status for view in db.state_views()}
    assert all(statuses[s] == StateStatus.QUEUED for s in stored + other)


def test_a_requeued_state_keeps_its_place_and_waits_until_due() -> None:
    db = Database()
    stored = [_store(db, "ns", "A") for _ in range(6)]
    first, second = _claim(db, "ns", ["A"], batch_size=2)
    signals.re_enqueue_after(db, first, 60_000)
    assert _claim(db, "ns", ["A"], batch_size=2) == stored[2:4]  # not due: passed over

    # Due now (as if its delay were over): it is handed out before the states stored after it.
    db.states[first].enqueue_after = now_ms()
    signals.re_enqueue_after(db, second, 1)
    db.states[second].enqueue_after = now_ms()
    assert _claim(db, "ns", ["A"]) == [first, second, *stored[4:]]
