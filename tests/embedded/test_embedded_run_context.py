"""Enqueue answers: exactly the upstream fields, or with run_id, graph_name and parents when asked."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
from exospherehost import GraphNodeModel

from exo_otel_demo.embedded import EmbeddedStateManager
from helpers.sm_fixtures import POLL_INTERVAL, sdk_state_manager, wait_until

NAMESPACE = "ctx"
UPSTREAM_FIELDS = {"state_id", "node_name", "identifier", "inputs", "created_at"}
CONTEXT_FIELDS = UPSTREAM_FIELDS | {"run_id", "graph_name", "parents"}
_SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}


async def _call(sm: EmbeddedStateManager, method: str, path: str, body: Any = None) -> Any:
    async with aiohttp.ClientSession() as session:
        url = f"{sm.uri}/v0/namespace/{NAMESPACE}/{path}"
        async with session.request(method, url, json=body, headers={"x-api-key": sm.api_key}) as response:
            assert response.status in (200, 201), await response.text()
            return await response.json()


async def _chain_run(sm: EmbeddedStateManager) -> list[dict[str, Any]]:
    """Run a -> b -> c by hand over HTTP; return the three enqueued states."""
    nodes = [{"name": "Step", "namespace": NAMESPACE, "inputs_schema": _SCHEMA, "outputs_schema": _SCHEMA,
              "secrets": []}]
    await _call(sm, "PUT", "nodes/", {"runtime_name": "hand", "runtime_namespace": NAMESPACE, "nodes": nodes})
    templates = [
        GraphNodeModel(node_name="Step", namespace=NAMESPACE, identifier="a", inputs={"text": "go"},
                       next_nodes=["b"]),
        GraphNodeModel(node_name="Step", namespace=NAMESPACE, identifier="b",
                       inputs={"text": "${{ a.outputs.text }}+b"}, next_nodes=["c"]),
        GraphNodeModel(node_name="Step", namespace=NAMESPACE, identifier="c",
                       inputs={"text": "${{ b.outputs.text }}+c"}),
    ]
    client = sdk_state_manager(sm, NAMESPACE)
    await client.upsert_graph("chain", templates, {}, polling_interval=POLL_INTERVAL)
    run_id = (await client.trigger("chain"))["run_id"]
    enqueued: list[dict[str, Any]] = []
    for _ in range(3):
        await wait_until(lambda: any(s.status == "CREATED" for s in sm.states(run_id)))
        answer = await _call(sm, "POST", "states/enqueue", {"nodes": ["Step"], "batch_size": 5})
        assert answer["count"] == 1 and answer["status"] == "QUEUED" and answer["namespace"] == NAMESPACE
        state = answer["states"][0]
        enqueued.append(state)
        outputs = {"outputs": [{"text": state["inputs"]["text"]}]}
        await _call(sm, "POST", f"state/{state['state_id']}/executed", outputs)
    await wait_until(lambda: sm.run_status(run_id) == "SUCCESS")
    for state in enqueued:
        state["_run_id"] = run_id
    return enqueued


def _check_common(states: list[dict[str, Any]]) -> None:
    assert [s["identifier"] for s in states] == ["a", "b", "c"]
    assert [s["inputs"] for s in states] == [{"text": "go"}, {"text": "go+b"}, {"text": "go+b+c"}]
    for state in states:
        assert re.fullmatch(r"[0-9a-f]{24}", state["state_id"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?", state["created_at"])


async def test_upstream_fields_only(state_manager: EmbeddedStateManager) -> None:
    states = await _chain_run(state_manager)
    _check_common(states)
    assert all(set(s) - {"_run_id"} == UPSTREAM_FIELDS for s in states)


async def test_run_context_when_asked(state_manager_with_context: EmbeddedStateManager) -> None:
    states = await _chain_run(state_manager_with_context)
    _check_common(states)
    assert all(set(s) - {"_run_id"} == CONTEXT_FIELDS for s in states)
    a, b, c = states
    assert all(s["run_id"] == s["_run_id"] and s["graph_name"] == "chain" for s in states)
    assert a["parents"] == {}
    assert b["parents"] == {"a": a["state_id"]}
    assert c["parents"] == {"a": a["state_id"], "b": b["state_id"]}
    assert list(c["parents"].items())[-1] == ("b", b["state_id"])  # the last entry is the direct parent
