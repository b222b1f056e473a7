"""Bad requests, against the embedded and the upstream server: the same status and body from both.

Wrong keys, unknown ids, ids that are no ObjectId (upstream's generic 500), wrong statuses, bodies
that do not decode or do not validate (FastAPI's 422 lists), and the order FastAPI checks them in.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
import pytest

from helpers.conformance_http import (
    INTERNAL_ERROR,
    MISSING_ID,
    NOT_AN_INT,
    NOT_AN_OBJECT,
    Client,
    new_namespace,
)
from helpers.servers import Server

STATE_ROUTES = [
    ("POST", "executed", {"outputs": []}),
    ("POST", "errored", {"error": "e"}),
    ("POST", "prune", {"data": {}}),
    ("POST", "re-enqueue-after", {"enqueue_after": 5}),
    ("POST", "manual-retry", {"fanout_id": "f"}),
    ("GET", "secrets", None),
]
ROUTES = [
    ("PUT", "nodes/"),
    ("GET", "nodes/"),
    ("GET", "graphs/"),
    ("GET", "/v0/namespaces"),
    ("PUT", "graph/g"),
    ("GET", "graph/g"),
    ("POST", "graph/g/trigger"),
    ("POST", "states/enqueue"),
    ("GET", "runs/1/10"),
    ("GET", "states/run/r/graph"),
    ("GET", f"graph/g/run/r/node/{MISSING_ID}"),
    *((method, f"state/{MISSING_ID}/{action}") for method, action, _ in STATE_ROUTES),
]


@pytest.fixture
def client(server: Server) -> Client:
    return Client(server, new_namespace("errors"))


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_wrong_or_empty_key_is_401(client: Client, method: str, path: str) -> None:
    for key in ("wrong", ""):
        assert await client.call(method, path, {"not": "valid"}, key=key) == (
            401,
            {"detail": "Invalid API key"},
        )


async def test_a_body_that_is_not_json_is_422_even_with_a_wrong_key(client: Client) -> None:
    status, answer = await client.call("POST", "states/enqueue", raw=b"{nope", key="wrong")
    assert status == 422
    assert answer["detail"] == [
        {
            "type": "json_invalid",
            "loc": ["body", 1],
            "msg": "JSON decode error",
            "input": {},
            "ctx": {"error": "Expecting property name enclosed in double quotes"},
        }
    ]
    # A body that is JSON but invalid: the key is checked first.
    assert await client.call("POST", "states/enqueue", {"x": 1}, key="wrong") == (
        401,
        {"detail": "Invalid API key"},
    )
    assert await client.call("GET", "runs/x/1", key="wrong") == (401, {"detail": "Invalid API key"})


@pytest.mark.parametrize(("method", "action", "body"), STATE_ROUTES)
async def test_an_id_that_is_no_object_id_is_upstreams_500(
    client: Client, method: str, action: str, body: Any
) -> None:
    assert await client.call(method, f"state/not-an-id/{action}", body) == (500, INTERNAL_ERROR)


async def test_unknown_ids_graphs_and_routes(client: Client) -> None:
    ns = client.namespace
    for method, action, body in STATE_ROUTES[:-1]:
        assert await client.call(method, f"state/{MISSING_ID}/{action}", body) == (
            404,
            {"detail": "State not found"},
        )
    assert await client.call("GET", f"state/{MISSING_ID}/secrets") == (500, INTERNAL_ERROR)
    assert await client.call("GET", "graph/nope") == (
        404,
        {"detail": f"Graph template nope not found in namespace {ns}"},
    )
    assert await client.call("POST", "graph/nope/trigger", {}) == (
        404,
        {"detail": f"Graph template not found for namespace {ns} and graph nope"},
    )
    assert await client.call("GET", "graph/g/run/r/node/xyz") == (
        400,
        {"detail": "Invalid node ID format: xyz"},
    )
    assert await client.call("GET", f"graph/g/run/r/node/{MISSING_ID}") == (
        404,
        {"detail": f"Node {MISSING_ID} not found in run r for graph g"},
    )
    assert await client.call("GET", "no/such/route") == (404, {"detail": "Not Found"})
    assert await client.call("DELETE", "graph/nope") == (405, {"detail": "Method Not Allowed"})
    assert await client.call("GET", "states/run/unknown/graph") == (
        200,
        {
            "root_states": [],
            "graph_name": "",
            "nodes": [],
            "edges": [],
            "node_count": 0,
            "edge_count": 0,
            "execution_summary": {
                s: 0
                for s in (
                    "CREATED",
                    "QUEUED",
                    "EXECUTED",
                    "ERRORED",
                    "NEXT_CREATED_ERROR",
                    "SUCCESS",
                    "PRUNED",
                    "RETRY_CREATED",
                )
            },
        },
    )


def _error(kind: str, loc: list[Any], msg: str, value: Any, **ctx: Any) -> dict[str, Any]:
    error = {"type": kind, "loc": ["body", *loc], "msg": msg, "input": value}
    return {**error, "ctx": ctx} if ctx else error


MISSING = "Field required"
NODE = {"node_name": "Step", "namespace": "n", "inputs": {}}


@pytest.mark.parametrize(
    ("method", "path", "body", "errors"),
    [
        (
            "POST",
            "states/enqueue",
            {"nodes": ["A"]},
            [_error("missing", ["batch_size"], MISSING, {"nodes": ["A"]})],
        ),
        (
            "POST",
            "states/enqueue",
            {"nodes": "A", "batch_size": "ten"},
            [
                _error("list_type", ["nodes"], "Input should be a valid list", "A"),
                _error("int_parsing", ["batch_size"], NOT_AN_INT, "ten"),
            ],
        ),
        ("POST", "states/enqueue", [1, 2], [_error("model_attributes_type", [], NOT_AN_OBJECT, [1, 2])]),
        ("POST", "states/enqueue", None, [_error("missing", [], MISSING, None)]),
        (
            "POST",
            f"state/{MISSING_ID}/executed",
            {"outputs": [{"a": "b"}, 3]},
            [_error("dict_type", ["outputs", 1], "Input should be a valid dictionary", 3)],
        ),
        (
            "POST",
            f"state/{MISSING_ID}/errored",
            {"error": 7},
            [_error("string_type", ["error"], "Input should be a valid string", 7)],
        ),
        (
            "POST",
            f"state/{MISSING_ID}/re-enqueue-after",
            {"enqueue_after": 0},
            [_error("greater_than", ["enqueue_after"], "Input should be greater than 0", 0, gt=0)],
        ),
        (
            "POST",
            f"state/{MISSING_ID}/re-enqueue-after",
            {"enqueue_after": 1.5},
            [
                _error(
                    "int_from_float",
                    ["enqueue_after"],
                    "Input should be a valid integer, got a number with a fractional part",
                    1.5,
                )
            ],
        ),
        ("POST", f"state/{MISSING_ID}/manual-retry", {}, [_error("missing", ["fanout_id"], MISSING, {})]),
        (
            "POST",
            "graph/g/trigger",
            {"start_delay": -1, "store": {"k": 1}},
            [
                _error("string_type", ["store", "k"], "Input should be a valid string", 1),
                _error(
                    "greater_than_equal",
                    ["start_delay"],
                    "Input should be greater than or equal to 0",
                    -1,
                    ge=0,
                ),
            ],
        ),
        (
            "PUT",
            "nodes/",
            {},
            [_error("missing", ["runtime_name"], MISSING, {}), _error("missing", ["nodes"], MISSING, {})],
        ),
        (
            "PUT",
            "nodes/",
            {"runtime_name": "r", "nodes": [{"name": "X", "inputs_schema": {}, "outputs_schema": {}}]},
            [
                _error(
                    "missing",
                    ["nodes", 0, "secrets"],
                    MISSING,
                    {"name": "X", "inputs_schema": {}, "outputs_schema": {}},
                )
            ],
        ),
        (
            "PUT",
            "graph/g",
            {},
            [_error("missing", ["secrets"], MISSING, {}), _error("missing", ["nodes"], MISSING, {})],
        ),
        ("PUT", "graph/g", {"nodes": []}, [_error("missing", ["secrets"], MISSING, {"nodes": []})]),
        (
            "PUT",
            "graph/g",
            {"secrets": {}, "nodes": [NODE]},
            [_error("missing", ["nodes", 0, "identifier"], MISSING, NODE)],
        ),
        (
            "PUT",
            "graph/g",
            {
                "secrets": {},
                "nodes": [{**NODE, "identifier": "a"}],
                "triggers": [{"type": "CRON", "value": {"expression": "x"}}],
            },
            [
                _error(
                    "value_error",
                    ["triggers", 0, "expression"],
                    "Value error, Invalid cron expression",
                    "x",
                    error={},
                )
            ],
        ),
    ],
)
async def test_malformed_bodies_are_422_like_fastapi(
    client: Client, method: str, path: str, body: Any, errors: list[dict[str, Any]]
) -> None:
    assert await client.call(method, path, body) == (422, {"detail": errors})


async def test_node_templates_are_checked_field_by_field(client: Client) -> None:
    bad = {
        "node_name": " ",
        "namespace": "n",
        "identifier": "store",
        "inputs": {},
        "next_nodes": ["b", "b", " "],
        "unites": {"identifier": "a", "strategy": "SOME"},
    }
    status, answer = await client.call(
        "PUT", "graph/g", {"secrets": {}, "nodes": [bad], "retry_policy": {"backoff_factor": 0}}
    )
    assert status == 422
    assert [(e["type"], e["loc"], e["msg"]) for e in answer["detail"]] == [
        ("value_error", ["body", "nodes", 0, "node_name"], "Value error, Node name cannot be empty"),
        (
            "value_error",
            ["body", "nodes", 0, "identifier"],
            "Value error, Node identifier cannot be reserved word 'store'",
        ),
        (
            "value_error",
            ["body", "nodes", 0, "next_nodes"],
            "Value error, Next node identifier b is not unique\nNext node identifier cannot be empty",
        ),
        ("enum", ["body", "nodes", 0, "unites", "strategy"], "Input should be 'ALL_SUCCESS' or 'ALL_DONE'"),
        ("greater_than", ["body", "retry_policy", "backoff_factor"], "Input should be greater than 0"),
    ]
    assert (await client.call("GET", "graph/g"))[0] == 404  # nothing stored


@pytest.mark.parametrize(
    ("raw", "status", "detail"),
    [
        (b"[" * 100_000, 400, "There was an error parsing the body"),  # too deep for the JSON decoder
        (b'{"nodes": ["\xff"], "batch_size": 1}', 400, "There was an error parsing the body"),  # not UTF-8
        (b'{"nodes": [], "batch_size": 1} x', 422, None),
        (b"null", 422, None),
        (b"", 422, None),
    ],
)
async def test_bodies_the_decoder_refuses(
    client: Client, raw: bytes, status: int, detail: str | None
) -> None:
    answer = await client.call("POST", "states/enqueue", raw=raw)
    assert answer[0] == status
    if detail is not None:
        assert answer[1] == {"detail": detail}


async def test_a_nan_in_a_422_answer_is_upstreams_500(client: Client) -> None:
    # The error would echo NaN, which JSON cannot carry: upstream's encoder fails and it answers 500.
    assert await client.call("POST", "states/enqueue", raw=b'{"nodes": [], "batch_size": NaN}') == (
        500,
        INTERNAL_ERROR,
    )


async def test_wrong_status_and_bad_triggers_are_400(client: Client, server: Server) -> None:
    await client.register("Step")
    store = {"store_config": {"required_keys": ["k"], "default_values": {}}}
    nodes = [client.node("a", {"text": "${{ store.k }}"}, next_nodes=["b"]), client.node("b")]
    assert (await client.put_graph("ok", nodes, **store))[0] == 201
    assert (await client.settled_graph("ok"))["validation_status"] == "VALID"
    assert await client.call("POST", "graph/ok/trigger", {}) == (
        400,
        {"detail": "Invalid input: 400: Dependent k not found in store for root node a"},
    )
    assert await client.call("POST", "graph/ok/trigger", {"inputs": {"text": "${{ b.outputs.text }}"}}) == (
        400,
        {"detail": "Invalid input: 400: Root node can have only store identifier as dependent but got b"},
    )
    status, started = await client.call("POST", "graph/ok/trigger", {"store": {"k": "v"}})
    assert status == 200
    (root,) = await server.histories(started["run_id"])
    for action, body in [("executed", {"outputs": []}), ("prune", {"data": {}})]:
        assert await client.call("POST", f"state/{root.id}/{action}", body) == (
            400,
            {"detail": "State is not queued"},
        )
    assert await client.call("POST", f"state/{root.id}/errored", {"error": "e"}) == (
        400,
        {"detail": "State is not queued or executed"},
    )
    status, answer = await client.call("POST", "states/enqueue", {"nodes": ["Step"], "batch_size": 10})
    assert (status, answer["count"]) == (200, 1)
    assert await client.call("POST", f"state/{root.id}/executed", {"outputs": [{"text": "t"}]}) == (
        200,
        {"status": "EXECUTED"},
    )
    assert await client.call("POST", f"state/{root.id}/executed", {"outputs": []}) == (
        400,
        {"detail": "State is not queued"},
    )
    for _ in range(100):
        if len(states := await server.histories(started["run_id"])) == 2:
            break
        await asyncio.sleep(0.05)
    assert [s.statuses for s in states] == [("CREATED", "QUEUED", "EXECUTED", "SUCCESS"), ("CREATED",)]


async def test_slash_redirects_head_and_health(server: Server) -> None:
    ns = new_namespace("routes")
    cases = [
        ("GET", f"/v0/namespace/{ns}/nodes", 307, f"/v0/namespace/{ns}/nodes/"),
        ("PUT", f"/v0/namespace/{ns}/nodes", 307, f"/v0/namespace/{ns}/nodes/"),
        ("GET", f"/v0/namespace/{ns}/graph/g/", 307, f"/v0/namespace/{ns}/graph/g"),
        ("GET", "/v0/namespaces/", 307, "/v0/namespaces"),
        ("HEAD", f"/v0/namespace/{ns}/nodes/", 405, None),
        ("GET", "/health", 200, None),
    ]
    async with aiohttp.ClientSession() as session:
        for method, path, status, location in cases:
            async with session.request(
                method, server.uri + path, headers={"x-api-key": "wrong"}, allow_redirects=False
            ) as response:
                assert response.status == status, (method, path)
                if location is not None:
                    assert response.headers["location"] == server.uri + location
                if path == "/health":
                    assert await response.json() == {"message": "OK"}


async def test_answers_carry_the_request_id(server: Server) -> None:
    given = "0b9c6c5e-8d3f-4a43-9a55-3f1f4b0b6d5e"
    async with aiohttp.ClientSession() as session:
        for headers in ({"x-exosphere-request-id": given}, {"x-exosphere-request-id": "not-a-uuid"}, {}):
            async with session.get(
                f"{server.uri}/v0/namespaces", headers={"x-api-key": "wrong", **headers}
            ) as response:
                assert response.status == 401
                echoed = response.headers["x-exosphere-request-id"]
                if headers.get("x-exosphere-request-id") == given:
                    assert echoed == given
                else:
                    assert str(uuid.UUID(echoed)) == echoed
