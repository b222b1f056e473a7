"""Bad input: wrong key, unknown ids, wrong status, malformed bodies, invalid graphs; the server survives."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import pytest
from exospherehost import GraphNodeModel, UnitesModel

from conformance_graph import GRAPH, NAMESPACE, NODES, RETRY_POLICY, SECRETS, STORE_CONFIG, graph_nodes
from exo_otel.embedded import EmbeddedStateManager
from sm_fixtures import POLL_INTERVAL, running_runtime, sdk_state_manager, wait_for_run, wait_until

NS = "errors"
_TEXT = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
MISSING_ID = "0" * 24
NOT_AN_OBJECT = "Input should be a valid dictionary or object to extract fields from"
NOT_AN_INT = "Input should be a valid integer, unable to parse string as an integer"


async def call(sm: EmbeddedStateManager, method: str, path: str, body: Any = None, *, key: str | None = None,
               raw: bytes | None = None, namespace: str = NS) -> tuple[int, Any]:
    headers = {"x-api-key": sm.api_key if key is None else key}
    async with aiohttp.ClientSession() as session:
        url = f"{sm.uri}/v0/namespace/{namespace}/{path}"
        kwargs: dict[str, Any] = {"data": raw} if raw is not None else {"json": body}
        async with session.request(method, url, headers=headers, **kwargs) as response:
            return response.status, await response.json()


async def _register(sm: EmbeddedStateManager, *names: str, secrets: tuple[str, ...] = ()) -> None:
    nodes = [{"name": n, "namespace": NS, "inputs_schema": _TEXT, "outputs_schema": _TEXT,
              "secrets": list(secrets)} for n in names]
    body = {"runtime_name": "r", "runtime_namespace": NS, "nodes": nodes}
    status, _ = await call(sm, "PUT", "nodes/", body)
    assert status == 200


def _node(identifier: str, inputs: dict[str, str] | None = None, next_nodes: list[str] | None = None,
          unites: str | None = None, name: str = "Step") -> dict[str, Any]:
    return GraphNodeModel(
        node_name=name, namespace=NS, identifier=identifier,
        inputs=inputs if inputs is not None else {"text": "x"},
        next_nodes=next_nodes, unites=None if unites is None else UnitesModel(identifier=unites),
    ).model_dump(mode="json")


async def _validated(sm: EmbeddedStateManager, name: str, nodes: list[dict[str, Any]], **extra: Any) -> Any:
    status, answer = await call(sm, "PUT", f"graph/{name}", {"secrets": {}, "nodes": nodes, **extra})
    assert status == 201 and answer["validation_status"] == "PENDING", answer
    return await wait_until(lambda: (g := sm.graph(NS, name)) and g["validation_status"] != "PENDING" and g)


@pytest.mark.parametrize(("method", "path"), [
    ("PUT", "nodes/"), ("PUT", "graph/g"), ("GET", "graph/g"), ("POST", "graph/g/trigger"),
    ("POST", "states/enqueue"), ("POST", f"state/{MISSING_ID}/executed"),
    ("POST", f"state/{MISSING_ID}/errored"),
    ("POST", f"state/{MISSING_ID}/prune"), ("POST", f"state/{MISSING_ID}/re-enqueue-after"),
    ("GET", f"state/{MISSING_ID}/secrets"), ("GET", "runs/1/10"), ("GET", "states/run/r/graph"),
    ("GET", f"graph/g/run/r/node/{MISSING_ID}"),
])
async def test_wrong_or_missing_key_is_401_before_anything_else(
    state_manager: EmbeddedStateManager, method: str, path: str
) -> None:
    for key in ("wrong", ""):
        assert await call(state_manager, method, path, {"not": "valid"}, key=key) == (
            401, {"detail": "Invalid API key"}
        )


async def test_unknown_graph_state_and_route(state_manager: EmbeddedStateManager) -> None:
    sm = state_manager
    for method, path, body in [
        ("GET", "graph/nope", None), ("POST", "graph/nope/trigger", {}),
        ("POST", f"state/{MISSING_ID}/executed", {"outputs": []}),
        ("POST", f"state/{MISSING_ID}/errored", {"error": "e"}),
        ("POST", f"state/{MISSING_ID}/prune", {"data": {}}),
        ("POST", f"state/{MISSING_ID}/re-enqueue-after", {"enqueue_after": 5}),
        ("POST", "state/not-an-id/executed", {"outputs": []}),
        ("GET", f"state/{MISSING_ID}/secrets", None),
        ("GET", f"graph/nope/run/r/node/{MISSING_ID}", None),
    ]:
        status, answer = await call(sm, method, path, body)
        assert status == 404 and isinstance(answer["detail"], str), (path, answer)
    assert await call(sm, "GET", "no/such/route") == (404, {"detail": "Not Found"})
    assert await call(sm, "DELETE", "graph/nope") == (405, {"detail": "Method Not Allowed"})
    assert (await call(sm, "GET", "graph/g/run/r/node/xyz"))[0] == 400
    assert await call(sm, "GET", "states/run/unknown/graph") == (200, {
        "root_states": [], "graph_name": "", "nodes": [], "edges": [], "node_count": 0, "edge_count": 0,
        "execution_summary": {s: 0 for s in ("CREATED", "QUEUED", "EXECUTED", "ERRORED", "NEXT_CREATED_ERROR",
                                             "SUCCESS", "PRUNED", "RETRY_CREATED")},
    })


def _error(kind: str, loc: list[Any], msg: str, value: Any, **ctx: Any) -> dict[str, Any]:
    error = {"type": kind, "loc": ["body", *loc], "msg": msg, "input": value}
    return {**error, "ctx": ctx} if ctx else error


@pytest.mark.parametrize(("path", "body", "errors"), [
    ("states/enqueue", {"nodes": ["A"]},
     [_error("missing", ["batch_size"], "Field required", {"nodes": ["A"]})]),
    ("states/enqueue", {"nodes": "A", "batch_size": "ten"},
     [_error("list_type", ["nodes"], "Input should be a valid list", "A"),
      _error("int_parsing", ["batch_size"], NOT_AN_INT, "ten")]),
    ("states/enqueue", [1, 2],
     [_error("model_attributes_type", [], NOT_AN_OBJECT, [1, 2])]),
    (f"state/{MISSING_ID}/executed", {"outputs": [{"a": "b"}, 3]},
     [_error("dict_type", ["outputs", 1], "Input should be a valid dictionary", 3)]),
    (f"state/{MISSING_ID}/errored", {"error": 7},
     [_error("string_type", ["error"], "Input should be a valid string", 7)]),
    (f"state/{MISSING_ID}/re-enqueue-after", {"enqueue_after": 0},
     [_error("greater_than", ["enqueue_after"], "Input should be greater than 0", 0, gt=0)]),
    (f"state/{MISSING_ID}/re-enqueue-after", {"enqueue_after": 1.5},
     [_error("int_from_float", ["enqueue_after"],
             "Input should be a valid integer, got a number with a fractional part", 1.5)]),
    ("graph/g/trigger", {"start_delay": -1, "store": {"k": 1}},
     [_error("string_type", ["store", "k"], "Input should be a valid string", 1),
      _error("greater_than_equal", ["start_delay"], "Input should be greater than or equal to 0", -1, ge=0)]),
    ("graph/g/trigger", None, [_error("missing", [], "Field required", None)]),
])
async def test_malformed_bodies_are_422_like_fastapi(
    state_manager: EmbeddedStateManager, path: str, body: Any, errors: list[dict[str, Any]]
) -> None:
    assert await call(state_manager, "POST", path, body) == (422, {"detail": errors})


async def test_malformed_json_and_graph_bodies(state_manager: EmbeddedStateManager) -> None:
    sm = state_manager
    status, answer = await call(sm, "POST", "states/enqueue", raw=b"{nope")
    assert status == 422 and answer["detail"][0]["type"] == "json_invalid"
    assert answer["detail"][0]["loc"] == ["body", 1]
    status, answer = await call(sm, "PUT", "graph/g", {"secrets": {}, "nodes": [
        {"node_name": " ", "namespace": NS, "identifier": "store", "inputs": {}, "unites": {"identifier": "a",
                                                                                         "strategy": "SOME"}},
    ], "retry_policy": {"backoff_factor": 0}})
    assert status == 422
    assert [(e["type"], e["loc"]) for e in answer["detail"]] == [
        ("value_error", ["body", "nodes", 0, "node_name"]),
        ("value_error", ["body", "nodes", 0, "identifier"]),
        ("enum", ["body", "nodes", 0, "unites", "strategy"]),
        ("greater_than", ["body", "retry_policy", "backoff_factor"]),
    ]
    assert sm.graph(NS, "g") is None  # nothing stored


@pytest.mark.parametrize(("nodes", "extra", "expected"), [
    ([_node("a", next_nodes=["b"]), _node("b", name="Unknown")], {},
     ["Node Unknown in namespace errors is not registered"]),
    ([_node("a"), _node("a")], {}, ["Identifier a is used by more than one node"]),
    ([_node("a", next_nodes=["zz"])], {}, ["Node a lists next node zz, which is not in the graph"]),
    ([_node("a", next_nodes=["b"]), _node("b", unites="zz")], {},
     ["Node b unites zz, which is not in the graph"]),
    ([_node("a"), _node("b")], {}, ["A graph needs exactly one root node (no incoming edge); found 2: a, b"]),
    ([_node("a", next_nodes=["b"]), _node("b", next_nodes=["c"]), _node("c", next_nodes=["b"])], {},
     ["Node b is on a cycle", "Node c is on a cycle"]),
    ([_node("a", next_nodes=["b"]), _node("b"), _node("c", unites="c")], {},
     ["Node c cannot unite itself"]),
    ([_node("a", next_nodes=["b", "c"]), _node("b", {"text": "${{ c.outputs.text }}"}), _node("c")], {},
     ["Input text of node b reads outputs of c, which is not an ancestor of b"]),
    ([_node("a", {"text": "${{ store.k }}"})], {},
     ["Input text of node a reads store key k, which is neither required nor given a default"]),
    ([_node("a", {"text": "${{ a.nope }}"})], {},
     ["Input text of node a: placeholder 'a.nope' in template '${{ a.nope }}' is not understood"]),
    ([_node("a", {"other": "x"})], {}, ["Input text of node Step has no template in node a"]),
    ([_node("a", next_nodes=["b"]), _node("b", {"text": "${{ a.outputs.missing }}"})], {},
     ["Output missing does not exist on node Step"]),
    ([_node("a", name="Secretive")], {},
     ["Secret api_key is needed by a node of the graph but the graph does not set it"]),
])
async def test_invalid_graphs_validate_in_the_background(
    state_manager: EmbeddedStateManager,
    nodes: list[dict[str, Any]],
    extra: dict[str, Any],
    expected: list[str],
) -> None:
    sm = state_manager
    await _register(sm, "Step")
    await _register(sm, "Secretive", secrets=("api_key",))
    graph = await _validated(sm, "bad", nodes, **extra)
    assert (graph["validation_status"], graph["validation_errors"]) == ("INVALID", expected)
    assert (await call(sm, "POST", "graph/bad/trigger", {}))[0] == 400
    status, answer = await call(sm, "GET", "graph/bad")
    assert status == 200 and answer["validation_errors"] == expected


async def test_wrong_status_and_bad_triggers_are_400(state_manager: EmbeddedStateManager) -> None:
    sm = state_manager
    await _register(sm, "Step")
    store = {"store_config": {"required_keys": ["k"], "default_values": {}}}
    nodes = [_node("a", {"text": "${{ store.k }}"}, next_nodes=["b"]), _node("b")]
    graph = await _validated(sm, "ok", nodes, **store)
    assert graph["validation_status"] == "VALID"
    assert (await call(sm, "POST", "graph/ok/trigger", {}))[0] == 400  # required store key missing
    status, started = await call(sm, "POST", "graph/ok/trigger", {"store": {"k": "v"}})
    assert status == 200
    (root,) = sm.states(started["run_id"])
    for action, body in [("executed", {"outputs": []}), ("errored", {"error": "e"}), ("prune", {"data": {}})]:
        status, answer = await call(sm, "POST", f"state/{root.id}/{action}", body)
        assert status == 400 and "not QUEUED" in answer["detail"]
    status, answer = await call(sm, "POST", "states/enqueue", {"nodes": ["Step"], "batch_size": 10})
    assert (status, answer["count"]) == (200, 1)
    assert await call(sm, "POST", f"state/{root.id}/executed", {"outputs": [{"text": "t"}]}) == (
        200, {"status": "EXECUTED"}
    )
    assert (await call(sm, "POST", f"state/{root.id}/executed", {"outputs": []}))[0] == 400  # not twice
    assert (await call(sm, "POST", f"state/{root.id}/errored", {"error": "late"}))[0] == 400
    await wait_until(lambda: len(sm.states(started["run_id"])) == 2)
    assert sm.state(root.id) is not None and sm.state(root.id).statuses == [  # type: ignore[union-attr]
        "CREATED", "QUEUED", "EXECUTED", "SUCCESS"
    ]


async def test_bad_requests_never_disturb_a_running_run(state_manager: EmbeddedStateManager) -> None:
    sm = state_manager
    client = sdk_state_manager(sm, NAMESPACE)
    async with running_runtime(sm, NAMESPACE, NODES):
        await client.upsert_graph(GRAPH, graph_nodes(), SECRETS, retry_policy=RETRY_POLICY,
                                  store_config=STORE_CONFIG, polling_interval=POLL_INTERVAL)
        run_id = (await client.trigger(GRAPH, store={"topic": uuid.uuid4().hex}))["run_id"]
        noise = 0
        while sm.run_status(run_id) == "PENDING" and noise < 200:
            for state in sm.states(run_id):
                await call(sm, "POST", f"state/{state.id}/executed", {"outputs": []}, key="wrong",
                           namespace=NAMESPACE)
                await call(sm, "POST", f"state/{state.id}/errored", raw=b"[", namespace=NAMESPACE)
                await call(sm, "POST", f"state/{state.id}/prune", {"data": "x"}, namespace=NAMESPACE)
                await call(sm, "POST", "graph/absent/trigger", {"store": {}}, namespace=NAMESPACE)
                noise += 1
        assert await wait_for_run(sm, run_id) == "SUCCESS"
    assert noise > 0
    assert sorted(s.identifier for s in sm.states(run_id)) == sorted(
        ["start", "audit", "prep"] + ["split"] * 3 + ["work"] * 3 + ["merge"] + ["flaky"] * 3 + ["finish"]
    )
