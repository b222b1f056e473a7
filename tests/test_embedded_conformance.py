"""The conformance graph, run by the real exospherehost SDK against the embedded state manager."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import pytest
from exospherehost import UnitesStrategyEnum

from conformance_graph import (
    GRAPH,
    NAMESPACE,
    NODES,
    REQUEUE_DELAY_MS,
    RETRY_POLICY,
    SECRETS,
    STORE_CONFIG,
    graph_nodes,
)
from exo_otel.embedded import EmbeddedStateManager, StateView
from sm_fixtures import POLL_INTERVAL, running_runtime, sdk_state_manager, wait_for_run

C, Q, E, S = "CREATED", "QUEUED", "EXECUTED", "SUCCESS"
RETRY, PRUNED = "RETRY_CREATED", "PRUNED"


async def _run(sm: EmbeddedStateManager, strategy: UnitesStrategyEnum, store: dict[str, str]) -> str:
    client = sdk_state_manager(sm, NAMESPACE)
    async with running_runtime(sm, NAMESPACE, NODES):
        graph = await client.upsert_graph(
            GRAPH, graph_nodes(strategy), SECRETS, retry_policy=RETRY_POLICY, store_config=STORE_CONFIG,
            polling_interval=POLL_INTERVAL,
        )
        assert graph["validation_status"] == "VALID"
        assert graph["secrets"] == {"token": True}
        answer = await client.trigger(GRAPH, store=store)
        assert answer["status"] == "CREATED"
        run_id: str = answer["run_id"]
        assert str(uuid.UUID(run_id)) == run_id
        await wait_for_run(sm, run_id)
    return run_id


def _by_identifier(states: list[StateView]) -> dict[str, list[StateView]]:
    grouped: dict[str, list[StateView]] = {}
    for state in states:
        grouped.setdefault(state.identifier, []).append(state)
    return grouped


async def _get(sm: EmbeddedStateManager, path: str) -> Any:
    async with aiohttp.ClientSession() as session:
        url = f"{sm.uri}/v0/namespace/{NAMESPACE}/{path}"
        async with session.get(url, headers={"x-api-key": sm.api_key}) as response:
            assert response.status == 200, await response.text()
            return await response.json()


async def test_conformance_run_all_success(state_manager: EmbeddedStateManager) -> None:
    sm = state_manager
    topic = f"topic-{uuid.uuid4().hex[:8]}"
    run_id = await _run(sm, UnitesStrategyEnum.ALL_SUCCESS, {"topic": topic})
    assert sm.run_status(run_id) == "SUCCESS"

    states = sm.states(run_id)
    by = _by_identifier(states)
    assert sorted(by) == ["audit", "finish", "flaky", "merge", "prep", "split", "start", "work"]
    assert len(states) == 14  # audit_log is never created: nothing follows a pruned state

    seed = f"item:{topic}"  # prefix from the store default, topic from the trigger
    batch = f"{seed}/batch"
    (start,) = by["start"]
    assert (start.statuses, start.inputs, start.outputs, start.parents) == (
        [C, Q, E, S], {"topic": topic, "prefix": "item"}, {"seed": seed}, {}
    )
    (audit,) = by["audit"]
    assert (audit.statuses, audit.parents, audit.outputs) == ([C, Q, PRUNED], {"start": start.id}, {})
    assert audit.data == {"reason": "audit is off", "seed": seed}
    (prep,) = by["prep"]
    assert (prep.statuses, prep.inputs, prep.outputs) == ([C, Q, E, S], {"seed": seed}, {"batch": batch})
    assert prep.parents == {"start": start.id}

    # Fan-out: the executed state keeps the first output; each further output is a copy.
    splits = by["split"]
    assert [s.statuses for s in splits] == [[C, Q, E, S], [E, S], [E, S]]
    assert [s.outputs for s in splits] == [{"item": f"{batch}#{i}"} for i in (1, 2, 3)]
    assert all(s.inputs == {"batch": batch} for s in splits)
    assert all(s.parents == {"start": start.id, "prep": prep.id} for s in splits)
    assert len({s.id for s in splits}) == 3

    works = sorted(by["work"], key=lambda s: s.inputs["item"])
    for index, (work, split) in enumerate(zip(works, splits, strict=True), start=1):
        item = f"{batch}#{index}"
        assert work.inputs == {"item": item, "mode": "strict"}
        assert work.outputs == {"result": f"done:{item}"}
        assert work.parents == {"start": start.id, "prep": prep.id, "split": split.id}
        assert list(work.parents)[-1] == "split"
    assert [w.statuses for w in works] == [[C, Q, E, S], [C, Q, C, Q, E, S], [C, Q, E, S]]
    requeued = works[1]
    back_to_created, queued_again = requeued.history[2], requeued.history[3]
    assert 0 <= requeued.enqueue_after - back_to_created.at_ms - REQUEUE_DELAY_MS <= 5
    assert queued_again.at_ms >= requeued.enqueue_after

    # The uniting node: created once, after every branch under prep succeeded, in prep's lineage.
    (merge,) = by["merge"]
    assert merge.statuses == [C, Q, E, S] and merge.does_unites
    assert merge.parents == {"start": start.id, "prep": prep.id}
    assert merge.inputs == {"batch": batch, "topic": topic}
    assert merge.history[0].at_ms >= max(w.history[-2].at_ms for w in works)

    # Retries: two failures, each a RETRY_CREATED with a new state due after the policy's delay.
    flakies = sorted(by["flaky"], key=lambda s: s.retry_count)
    assert [f.retry_count for f in flakies] == [0, 1, 2]
    assert [f.statuses for f in flakies] == [[C, Q, RETRY], [C, Q, RETRY], [C, Q, E, S]]
    assert [f.error for f in flakies] == ["flaky failure 1", "flaky failure 2", None]
    assert all(f.parents == {"start": start.id, "prep": prep.id, "merge": merge.id} for f in flakies)
    assert len({f.fanout_id for f in flakies}) == 1
    for failed, retry, delay in ((flakies[0], flakies[1], 40), (flakies[1], flakies[2], 80)):
        assert 0 <= retry.enqueue_after - failed.history[-1].at_ms - delay <= 5
        assert retry.history[1].at_ms >= retry.enqueue_after
    summary = f"{batch} merged for {topic}"
    assert flakies[2].outputs == {"value": f"{summary} checked"}

    (finish,) = by["finish"]
    assert finish.statuses == [C, Q, E, S]
    assert finish.parents == {"start": start.id, "prep": prep.id, "merge": merge.id, "flaky": flakies[2].id}
    assert finish.outputs == {"report": f"{summary} checked by {seed} ({len(SECRETS['token'])})"}

    # The run APIs agree with the records.
    structure = await _get(sm, f"states/run/{run_id}/graph")
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
        "CREATED": 0, "QUEUED": 0, "EXECUTED": 0, "ERRORED": 0, "NEXT_CREATED_ERROR": 0,
        "SUCCESS": 11, "PRUNED": 1, "RETRY_CREATED": 2,
    }

    runs = await _get(sm, "runs/1/10")
    assert runs["total"] == 1 and (runs["page"], runs["size"], runs["namespace"]) == (1, 10, NAMESPACE)
    (listed,) = runs["runs"]
    assert listed == {
        "run_id": run_id, "graph_name": GRAPH, "success_count": 12, "pending_count": 0, "errored_count": 0,
        "retried_count": 2, "total_count": 14, "status": "SUCCESS", "created_at": listed["created_at"],
    }

    details = await _get(sm, f"graph/{GRAPH}/run/{run_id}/node/{finish.id}")
    assert details["id"] == finish.id and details["status"] == "SUCCESS"
    assert (details["run_id"], details["graph_name"], details["identifier"]) == (run_id, GRAPH, "finish")
    assert details["parents"] == finish.parents and details["outputs"] == finish.outputs


async def test_all_done_unites_past_a_pruned_branch(state_manager: EmbeddedStateManager) -> None:
    sm = state_manager
    topic = f"topic-{uuid.uuid4().hex[:8]}"
    store = {"topic": topic, "prefix": "given", "mode": "lenient"}  # the trigger overrides both defaults
    run_id = await _run(sm, UnitesStrategyEnum.ALL_DONE, store)
    assert sm.run_status(run_id) == "SUCCESS"
    by = _by_identifier(sm.states(run_id))
    (start,) = by["start"]
    (prep,) = by["prep"]
    assert start.inputs == {"topic": topic, "prefix": "given"}
    works = sorted(by["work"], key=lambda s: s.inputs["item"])
    assert [w.statuses for w in works] == [[C, Q, E, S], [C, Q, C, Q, E, S], [C, Q, PRUNED]]
    assert works[2].data == {"skipped": works[2].inputs["item"]}
    (merge,) = by["merge"]
    assert merge.statuses == [C, Q, E, S] and merge.parents == {"start": start.id, "prep": prep.id}
    assert [f.statuses[-1] for f in sorted(by["flaky"], key=lambda s: s.retry_count)] == [RETRY, RETRY, S]
    (finish,) = by["finish"]
    assert finish.statuses[-1] == S


async def test_all_success_never_unites_past_a_pruned_branch(state_manager: EmbeddedStateManager) -> None:
    sm = state_manager
    store = {"topic": f"topic-{uuid.uuid4().hex[:8]}", "mode": "lenient"}
    run_id = await _run(sm, UnitesStrategyEnum.ALL_SUCCESS, store)
    by = _by_identifier(sm.states(run_id))
    assert sorted(by) == ["audit", "prep", "split", "start", "work"]
    assert sorted(w.status for w in by["work"]) == [PRUNED, S, S]
    assert sm.run_status(run_id) == "SUCCESS"


@pytest.mark.parametrize("delay_ms", [300])
async def test_start_delay_holds_the_root_back(state_manager: EmbeddedStateManager, delay_ms: int) -> None:
    sm = state_manager
    client = sdk_state_manager(sm, NAMESPACE)
    async with running_runtime(sm, NAMESPACE, NODES):
        await client.upsert_graph(GRAPH, graph_nodes(), SECRETS, retry_policy=RETRY_POLICY,
                                  store_config=STORE_CONFIG, polling_interval=POLL_INTERVAL)
        answer = await client.trigger(GRAPH, store={"topic": uuid.uuid4().hex}, start_delay=delay_ms)
        await wait_for_run(sm, answer["run_id"])
    start = next(s for s in sm.states(answer["run_id"]) if s.identifier == "start")
    assert start.enqueue_after - start.history[0].at_ms >= delay_ms - 2
    assert start.history[1].status == Q and start.history[1].at_ms >= start.enqueue_after
