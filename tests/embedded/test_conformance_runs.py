"""The conformance graph, run by the real exospherehost SDK, against the embedded and the upstream server.

The same assertions hold for both: state histories (the embedded inspection API, the launcher's debug
route upstream), and what the run APIs answer (inputs, outputs, parents, errors, run list, structure).
What only the embedded server can show (pruned data, fan-out ids, exact due times) is checked on it.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from exospherehost import UnitesStrategyEnum

from helpers import conformance_graph as cg
from helpers.conformance_graph import GRAPH, NODES, REQUEUE_DELAY_MS, SECRETS
from helpers.servers import EmbeddedServer, Server, StateRecord, by_identifier

C, Q, E, S = "CREATED", "QUEUED", "EXECUTED", "SUCCESS"
RETRY, PRUNED = "RETRY_CREATED", "PRUNED"
SLACK_MS = 10  # upstream takes "now" a moment (a database call or two) before the write the history records


def _namespace() -> str:
    return f"conformance-{uuid.uuid4().hex[:8]}"


def _ended(*identifiers: str) -> Any:
    return lambda states: all(any(s.identifier == i and s.status == S for s in states) for i in identifiers)


async def _run(
    server: Server, namespace: str, strategy: UnitesStrategyEnum, store: dict[str, str], until: Any = None
) -> tuple[str, list[StateRecord]]:
    client = server.client(namespace)
    async with server.runtime(namespace, NODES):
        graph = await cg.upsert(client, strategy, namespace)
        assert graph["validation_status"] == "VALID"
        assert graph["secrets"] == {"token": True}
        answer = await client.trigger(GRAPH, store=store)
        assert answer["status"] == "CREATED"
        run_id: str = answer["run_id"]
        assert str(uuid.UUID(run_id)) == run_id
        states = await server.wait_for_run(run_id, until=until)
    return run_id, states


async def _get(server: Server, namespace: str, path: str) -> Any:
    status, body = await server.request("GET", f"/v0/namespace/{namespace}/{path}")
    assert status == 200, body
    return body


async def test_conformance_run_all_success(server: Server) -> None:
    namespace = _namespace()
    topic = f"topic-{uuid.uuid4().hex[:8]}"
    run_id, states = await _run(
        server, namespace, UnitesStrategyEnum.ALL_SUCCESS, {"topic": topic}, until=_ended("finish")
    )
    assert await server.run_status(run_id) == "SUCCESS"
    by = by_identifier(states)
    assert sorted(by) == ["audit", "finish", "flaky", "merge", "prep", "split", "start", "work"]
    assert len(states) == 14  # audit_log is never created: nothing follows a pruned state
    info = {s.id: await server.details(namespace, GRAPH, run_id, s.id) for s in states}

    seed = f"item:{topic}"  # prefix from the store default, topic from the trigger
    batch = f"{seed}/batch"
    (start,) = by["start"]
    assert start.statuses == (C, Q, E, S)
    assert (info[start.id]["inputs"], info[start.id]["outputs"], info[start.id]["parents"]) == (
        {"topic": topic, "prefix": "item"},
        {"seed": seed},
        {},
    )
    (audit,) = by["audit"]
    assert (audit.statuses, info[audit.id]["parents"], info[audit.id]["outputs"]) == (
        (C, Q, PRUNED),
        {"start": start.id},
        {},
    )
    (prep,) = by["prep"]
    assert prep.statuses == (C, Q, E, S)
    assert (info[prep.id]["inputs"], info[prep.id]["outputs"]) == ({"seed": seed}, {"batch": batch})
    assert info[prep.id]["parents"] == {"start": start.id}

    # Fan-out: the executed state keeps the first output; each further output is a copy.
    splits = by["split"]
    assert [s.statuses for s in splits] == [(C, Q, E, S), (E, S), (E, S)]
    assert [info[s.id]["outputs"] for s in splits] == [{"item": f"{batch}#{i}"} for i in (1, 2, 3)]
    assert all(info[s.id]["inputs"] == {"batch": batch} for s in splits)
    assert all(info[s.id]["parents"] == {"start": start.id, "prep": prep.id} for s in splits)

    works = sorted(by["work"], key=lambda s: info[s.id]["inputs"]["item"])
    for index, (work, split) in enumerate(zip(works, splits, strict=True), start=1):
        item = f"{batch}#{index}"
        assert info[work.id]["inputs"] == {"item": item, "mode": "strict"}
        assert info[work.id]["outputs"] == {"result": f"done:{item}"}
        assert info[work.id]["parents"] == {"start": start.id, "prep": prep.id, "split": split.id}
        assert list(info[work.id]["parents"])[-1] == "split"
    assert [w.statuses for w in works] == [(C, Q, E, S), (C, Q, C, Q, E, S), (C, Q, E, S)]
    requeued = works[1]
    assert requeued.times[3] - requeued.times[2] >= REQUEUE_DELAY_MS - SLACK_MS  # back to CREATED, then due

    # The uniting node: created once, after every branch under prep succeeded, in prep's lineage.
    (merge,) = by["merge"]
    assert merge.statuses == (C, Q, E, S)
    assert info[merge.id]["parents"] == {"start": start.id, "prep": prep.id}
    assert info[merge.id]["inputs"] == {"batch": batch, "topic": topic}
    assert merge.times[0] >= max(w.times[-2] for w in works)

    # Retries: two failures, each a RETRY_CREATED with a new state due after the policy's delay.
    flakies = sorted(by["flaky"], key=lambda s: s.times[0])
    assert [f.statuses for f in flakies] == [(C, Q, RETRY), (C, Q, RETRY), (C, Q, E, S)]
    assert [info[f.id]["error"] for f in flakies] == ["flaky failure 1", "flaky failure 2", None]
    assert all(
        info[f.id]["parents"] == {"start": start.id, "prep": prep.id, "merge": merge.id} for f in flakies
    )
    for failed, retry, delay in ((flakies[0], flakies[1], 40), (flakies[1], flakies[2], 80)):
        # Due after the delay, counted from when the retry was created (upstream records the failure later).
        assert failed.times[1] <= retry.times[0] and retry.times[1] - retry.times[0] >= delay - SLACK_MS
    summary = f"{batch} merged for {topic}"
    assert info[flakies[2].id]["outputs"] == {"value": f"{summary} checked"}

    (finish,) = by["finish"]
    assert finish.statuses == (C, Q, E, S)
    assert info[finish.id]["parents"] == {
        "start": start.id,
        "prep": prep.id,
        "merge": merge.id,
        "flaky": flakies[2].id,
    }
    assert info[finish.id]["outputs"] == {"report": f"{summary} checked by {seed} ({len(SECRETS['token'])})"}

    # The run APIs agree with the histories.
    structure = await _get(server, namespace, f"states/run/{run_id}/graph")
    assert structure["graph_name"] == GRAPH
    assert [n["id"] for n in structure["root_states"]] == [start.id]
    assert {n["id"]: (n["identifier"], n["status"]) for n in structure["nodes"]} == {
        s.id: (s.identifier, s.status) for s in states
    }
    expected_edges = {(start.id, prep.id), (start.id, audit.id), (prep.id, merge.id)}
    expected_edges |= {(flakies[2].id, finish.id)} | {(prep.id, s.id) for s in splits}
    expected_edges |= {(s.id, w.id) for s, w in zip(splits, works, strict=True)}
    expected_edges |= {(merge.id, f.id) for f in flakies}
    assert {(e["source"], e["target"]) for e in structure["edges"]} == expected_edges
    assert (structure["node_count"], structure["edge_count"]) == (14, 13)
    assert structure["execution_summary"] == {
        "CREATED": 0,
        "QUEUED": 0,
        "EXECUTED": 0,
        "ERRORED": 0,
        "NEXT_CREATED_ERROR": 0,
        "SUCCESS": 11,
        "PRUNED": 1,
        "RETRY_CREATED": 2,
    }

    runs = await _get(server, namespace, "runs/1/10")
    assert runs["total"] == 1 and (runs["page"], runs["size"], runs["namespace"]) == (1, 10, namespace)
    (listed,) = runs["runs"]
    assert listed == {
        "run_id": run_id,
        "graph_name": GRAPH,
        "success_count": 12,
        "pending_count": 0,
        "errored_count": 0,
        "retried_count": 2,
        "total_count": 14,
        "status": "SUCCESS",
        "created_at": listed["created_at"],
    }
    assert info[finish.id]["status"] == "SUCCESS" and info[finish.id]["identifier"] == "finish"
    assert (info[finish.id]["run_id"], info[finish.id]["graph_name"]) == (run_id, GRAPH)

    if isinstance(server, EmbeddedServer):  # what the API does not show: the records themselves
        _embedded_records(server, run_id)


def _embedded_records(server: EmbeddedServer, run_id: str) -> None:
    views = {view.id: view for view in server.sm.states(run_id)}
    by: dict[str, list[Any]] = {}
    for view in views.values():
        by.setdefault(view.identifier, []).append(view)
    (audit,) = by["audit"]
    assert audit.data["reason"] == "audit is off"
    requeued = next(w for w in by["work"] if w.inputs["item"].endswith("#2"))
    back_to_created, queued_again = requeued.history[2], requeued.history[3]
    assert 0 <= requeued.enqueue_after - back_to_created.at_ms - REQUEUE_DELAY_MS <= 5
    assert queued_again.at_ms >= requeued.enqueue_after
    flakies = sorted(by["flaky"], key=lambda s: s.retry_count)
    assert [f.retry_count for f in flakies] == [0, 1, 2]
    assert len({f.fanout_id for f in flakies}) == 1
    for failed, retry, delay in ((flakies[0], flakies[1], 40), (flakies[1], flakies[2], 80)):
        assert 0 <= retry.enqueue_after - failed.history[-1].at_ms - delay <= 5
        assert retry.history[1].at_ms >= retry.enqueue_after
    (merge,) = by["merge"]
    assert merge.does_unites


async def test_all_done_unites_past_a_pruned_branch(server: Server) -> None:
    namespace = _namespace()
    topic = f"topic-{uuid.uuid4().hex[:8]}"
    store = {"topic": topic, "prefix": "given", "mode": "lenient"}  # the trigger overrides both defaults
    run_id, states = await _run(server, namespace, UnitesStrategyEnum.ALL_DONE, store, until=_ended("finish"))
    assert await server.run_status(run_id) == "SUCCESS"
    by = by_identifier(states)
    (start,) = by["start"]
    (prep,) = by["prep"]
    assert (await server.details(namespace, GRAPH, run_id, start.id))["inputs"] == {
        "topic": topic,
        "prefix": "given",
    }
    items = {
        w.id: (await server.details(namespace, GRAPH, run_id, w.id))["inputs"]["item"] for w in by["work"]
    }
    works = sorted(by["work"], key=lambda w: items[w.id])
    assert [w.statuses for w in works] == [(C, Q, E, S), (C, Q, C, Q, E, S), (C, Q, PRUNED)]
    (merge,) = by["merge"]
    assert merge.statuses == (C, Q, E, S)
    assert (await server.details(namespace, GRAPH, run_id, merge.id))["parents"] == {
        "start": start.id,
        "prep": prep.id,
    }
    assert [f.statuses[-1] for f in by["flaky"]] == [RETRY, RETRY, S]
    (finish,) = by["finish"]
    assert finish.statuses[-1] == S


async def test_all_success_never_unites_past_a_pruned_branch(server: Server) -> None:
    namespace = _namespace()
    store = {"topic": f"topic-{uuid.uuid4().hex[:8]}", "mode": "lenient"}
    run_id, states = await _run(
        server,
        namespace,
        UnitesStrategyEnum.ALL_SUCCESS,
        store,
        until=lambda s: sum(x.identifier == "work" for x in s) == 3,
    )
    by = by_identifier(states)
    assert sorted(by) == ["audit", "prep", "split", "start", "work"]
    assert sorted(w.status for w in by["work"]) == [PRUNED, S, S]
    assert await server.run_status(run_id) == "SUCCESS"


@pytest.mark.parametrize("delay_ms", [300])
async def test_start_delay_holds_the_root_back(server: Server, delay_ms: int) -> None:
    namespace = _namespace()
    client = server.client(namespace)
    async with server.runtime(namespace, NODES):
        await cg.upsert(client, namespace=namespace)
        answer = await client.trigger(GRAPH, store={"topic": uuid.uuid4().hex}, start_delay=delay_ms)
        states = await server.wait_for_run(answer["run_id"], until=_ended("finish"))
    start = next(s for s in states if s.identifier == "start")
    assert start.statuses[:2] == (C, Q)
    assert start.times[1] - start.times[0] >= delay_ms - SLACK_MS
