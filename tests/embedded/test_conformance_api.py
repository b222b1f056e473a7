"""What the API answers, against the embedded and the upstream server: graph validation at upsert time
and in the background, GET graph, the run list and its paging, the listing endpoints, manual retry."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from helpers import conformance_graph as cg
from helpers.conformance_http import TEXT_SCHEMA, Client, graph_error, new_namespace, nodes_error
from helpers.servers import Server

ROOTS_TAIL = "ues={}), 'triggers': []}"


@pytest.fixture
def client(server: Server) -> Client:
    return Client(server, new_namespace("api"))


def _node_repr(client: Client, identifier: str, next_nodes: str = "[]", unites: str = "None") -> str:
    return (
        f"NodeTemplate(node_name='Step', namespace='{client.namespace}', identifier='{identifier}', "
        f"inputs={{'text': 'x'}}, next_nodes={next_nodes}, unites={unites})"
    )


async def test_structural_errors_are_refused_at_upsert_with_upstreams_text(client: Client) -> None:
    c, ns = client, client.namespace

    async def refused(nodes: list[dict[str, Any]], **extra: Any) -> str:
        status, answer = await c.put_graph("g", nodes, **extra)
        assert status == 400, answer
        return str(answer["detail"])

    head = "[NodeTemplate(node_name='"
    assert await refused([c.node("a"), c.node("a")]) == nodes_error(
        "Node identifier a is not unique", f"{head}..._nodes=[], unites=None)]"
    )
    assert await refused([c.node("a", next_nodes=["zz"])]) == nodes_error(
        "Node identifier zz does not exist in the graph", f"{head}...es=['zz'], unites=None)]"
    )

    def whole(message: str) -> str:
        return graph_error(message, ROOTS_TAIL, "g", ns)

    assert await refused([c.node("a", next_nodes=["b"]), c.node("b", unites="zz")]) == whole(
        "Node b has an unites target zz that does not exist"
    )
    assert await refused([c.node("a", next_nodes=["b"]), c.node("b"), c.node("c", unites="c")]) == whole(
        "Node c has an unites target c that is the same as the node itself"
    )
    assert await refused([c.node("a"), c.node("b")]) == whole(
        "There should be exactly one root node in the graph but found 2 nodes with zero in-degree: "
        f"[{_node_repr(c, 'a')}, {_node_repr(c, 'b')}]"
    )
    assert await refused([]) == whole(
        "There should be exactly one root node in the graph but found 0 nodes with zero in-degree: []"
    )
    assert await refused(
        [c.node("a", next_nodes=["b"]), c.node("b", next_nodes=["c"]), c.node("c", next_nodes=["b"])]
    ) == whole("Node b is not acyclic")
    assert await refused(
        [c.node("a", next_nodes=["b", "c"]), c.node("b", {"text": "${{ c.outputs.text }}"}), c.node("c")]
    ) == whole("Input ${{ c.outputs.text }} depends on c but c is not a parent of b")
    assert await refused([c.node("a", {"text": "${{ store.k }}"})]) == whole(
        "Input ${{ store.k }} depends on k but k is not a required key or a default value"
    )
    assert await refused([c.node("a", {"text": "${{ a.nope }}"})]) == whole(
        "Error creating dependent string for input ${{ a.nope }} check syntax string: "
        "Invalid syntax string placeholder  a.nope  for: ${{ a.nope }}"
    )
    assert await refused([c.node("a", {"text": "${{ store.k"})]) == whole(
        "Error creating dependent string for input ${{ store.k check syntax string: "
        "Invalid syntax string placeholder  store.k for: ${{ store.k '${' not closed"
    )
    assert await refused([c.node("a", {"text": 5})]) == whole("Input 5 is not a string")
    # A child of a unites node may not read the unites node's outputs (the rule the graphs follow).
    assert await refused(
        [
            c.node("a", next_nodes=["m"]),
            c.node("m", unites="a", next_nodes=["p"]),
            c.node("p", {"text": "${{ m.outputs.text }}"}),
        ]
    ) == whole("Input ${{ m.outputs.text }} depends on m but m is not a parent of p")
    # A unites node's parents are the united node's lineage, not the branch that leads to it.
    assert await refused(
        [
            c.node("a", next_nodes=["b"]),
            c.node("b", next_nodes=["m"]),
            c.node("m", {"text": "${{ b.outputs.text }}"}, unites="a"),
        ]
    ) == whole("Input ${{ b.outputs.text }} depends on b but b is not a parent of m")
    status, answer = await c.call("PUT", "graph/g", {"secrets": {"": "v"}, "nodes": [c.node("a")]})
    assert status == 400 and answer["detail"].startswith(
        "Error validating graph template: 1 validation error for GraphTemplate\nsecrets\n"
        "  Value error, Secrets cannot be empty [type=value_error, input_value={'': "
    )
    assert (await c.call("GET", "graph/g"))[0] == 404  # none of them was stored


async def test_a_refused_update_keeps_the_stored_graph(client: Client) -> None:
    c = client
    await c.register("Step")
    assert (await c.put_graph("g", [c.node("a", next_nodes=["b"]), c.node("b")]))[0] == 201
    before = await c.settled_graph("g")
    status, answer = await c.put_graph("g", [c.node("a"), c.node("b")])
    assert status == 400
    assert answer["detail"].startswith(
        "Error validating graph template: 1 validation error for GraphTemplate\n"
        "  Value error, There should be exactly one root node"
    )
    assert ", input_value={'id': ObjectId('" in answer["detail"]
    assert "..., 'default_values': {}}}, input_type=dict]" in answer["detail"]
    status, answer = await c.put_graph("g", [c.node("a"), c.node("a")])
    assert (status, answer["detail"]) == (
        400,
        nodes_error(
            "Node identifier a is not unique", "[{'node_name': 'Step', 'n...s': [], 'unites': None}]"
        ),
    )
    assert await c.settled_graph("g") == before


async def test_background_validation_against_the_registered_nodes(client: Client) -> None:
    c, ns = client, client.namespace
    await c.register("Step")
    await c.register("Secretive", secrets=("api_key",))
    cases = [
        (
            [c.node("a", next_nodes=["b"]), c.node("b", name="Unknown")],
            [
                f"Node Unknown in namespace {ns} does not exist.",
                f"Node Unknown in namespace {ns} does not exist",
            ],
        ),
        (
            [c.node("a", {"other": "x"})],
            [f"Input text in node Step in namespace {ns} is not present in the graph template"],
        ),
        (
            [c.node("a", next_nodes=["b"]), c.node("b", {"text": "${{ a.outputs.missing }}"})],
            [f"Field missing in node Step in namespace {ns} does not exist"],
        ),
        (
            [c.node("a", name="Secretive")],
            ["Secret api_key is required but not present in the graph template"],
        ),
    ]
    for index, (nodes, expected) in enumerate(cases):
        name = f"bad{index}"
        status, answer = await c.put_graph(name, nodes)
        assert (status, answer["validation_status"], answer["validation_errors"]) == (201, "PENDING", [])
        graph = await c.settled_graph(name)
        assert (graph["validation_status"], graph["validation_errors"]) == ("INVALID", expected)
        assert await c.call("POST", f"graph/{name}/trigger", {}) == (
            400,
            {"detail": "Graph template is not valid"},
        )


async def test_get_graph_answers_the_default_settings(client: Client) -> None:
    c = client
    await c.register("Step")
    settings = {
        "retry_policy": {"max_retries": 1, "backoff_factor": 5},
        "store_config": {"required_keys": ["k"], "default_values": {"d": "1"}},
        "triggers": [{"type": "CRON", "value": {"expression": "0 0 1 1 *"}}],
    }
    status, put = await c.call("PUT", "graph/g", {"secrets": {"s": "v"}, "nodes": [c.node("a")], **settings})
    assert status == 201
    assert (put["retry_policy"]["max_retries"], put["store_config"], put["triggers"]) == (
        1,
        settings["store_config"],
        settings["triggers"],
    )
    assert put["nodes"][0]["next_nodes"] == []  # none is stored as an empty list
    got = await c.settled_graph("g")
    assert got["retry_policy"] == {
        "max_retries": 3,
        "strategy": "EXPONENTIAL",
        "backoff_factor": 2000,
        "exponent": 2,
        "max_delay": None,
    }
    assert (got["store_config"], got["triggers"]) == ({"required_keys": [], "default_values": {}}, [])
    assert (got["secrets"], got["validation_status"], got["nodes"]) == ({"s": True}, "VALID", put["nodes"])
    assert await c.call("POST", "graph/g/trigger", {}) == (400, {"detail": "Missing store keys: {'k'}"})


async def _states(server: Server, run_id: str, count: int) -> list[Any]:
    for _ in range(200):
        if len(states := await server.histories(run_id)) >= count:
            return states
        await asyncio.sleep(0.025)
    raise AssertionError(f"run {run_id} never had {count} states")


async def test_run_list_status_paging_and_manual_retry(client: Client, server: Server) -> None:
    c = client
    await c.register("Step")
    nodes = [c.node("a", next_nodes=["b"]), c.node("b", {"text": "${{ a.outputs.text }}"})]
    assert (await c.put_graph("g", nodes, retry_policy={"max_retries": 0}))[0] == 201
    await c.settled_graph("g")
    run_ids = [(await c.call("POST", "graph/g/trigger", {}))[1]["run_id"] for _ in range(3)]
    status, queued = await c.call("POST", "states/enqueue", {"nodes": ["Step"], "batch_size": 1})
    root = queued["states"][0]["state_id"]
    owners = [r for r in run_ids if root in {s.id for s in await server.histories(r)}]
    (run_id,) = owners
    assert await c.call("POST", f"state/{root}/executed", {"outputs": [{"text": "1"}, {"text": "2"}]}) == (
        200,
        {"status": "EXECUTED"},
    )
    b_states = [s for s in await _states(server, run_id, 4) if s.identifier == "b"]
    # Claim both b states of this run, then fail one and put the other back: ERRORED and CREATED.
    claimed: list[str] = []
    while len(claimed) < 2:
        status, queued = await c.call("POST", "states/enqueue", {"nodes": ["Step"], "batch_size": 1})
        claimed += [s["state_id"] for s in queued["states"] if s["state_id"] in {b.id for b in b_states}]
    assert await c.call("POST", f"state/{claimed[0]}/errored", {"error": "boom"}) == (
        200,
        {"status": "ERRORED", "retry_created": False},
    )
    status, back = await c.call("POST", f"state/{claimed[1]}/re-enqueue-after", {"enqueue_after": 600_000})
    assert (status, back["status"]) == (200, "CREATED")
    status, runs = await c.call("GET", "runs/1/10")
    listed = next(r for r in runs["runs"] if r["run_id"] == run_id)
    assert (listed["status"], listed["errored_count"], listed["pending_count"]) == ("PENDING", 1, 1)
    listed_ids = [r["run_id"] for r in runs["runs"]]
    assert sorted(listed_ids) == sorted(run_ids)
    created = [r["created_at"] for r in runs["runs"]]
    assert created == sorted(created, reverse=True)  # newest first
    for page, size, count in [(0, 10, 3), (1, 0, 3), (2, 2, 1), (-1, 2, 2), (1, -1, 1)]:
        status, answer = await c.call("GET", f"runs/{page}/{size}")
        assert (status, answer["total"], answer["page"], answer["size"], len(answer["runs"])) == (
            200,
            3,
            page,
            size,
            count,
        )

    fanout = uuid.uuid4().hex
    status, retried = await c.call("POST", f"state/{claimed[0]}/manual-retry", {"fanout_id": fanout})
    assert (status, retried["status"]) == (200, "CREATED")
    assert await c.call("POST", f"state/{claimed[0]}/manual-retry", {"fanout_id": fanout}) == (
        409,
        {"detail": "Duplicate retry state detected"},
    )
    assert await c.call(
        "POST", f"/v0/namespace/{new_namespace()}/state/{claimed[0]}/manual-retry", {"fanout_id": "other"}
    ) == (404, {"detail": "State not found"})
    by_id = {s.id: s for s in await server.histories(run_id)}
    assert by_id[claimed[0]].statuses[-2:] == ("ERRORED", "RETRY_CREATED")
    assert by_id[retried["id"]].statuses == ("CREATED",)


async def test_listing_nodes_graphs_and_namespaces(client: Client) -> None:
    c, ns = client, client.namespace
    await c.register("Step", "Other")
    assert (await c.call("PUT", "graph/g", {"secrets": {"s": "v"}, "nodes": [c.node("a")]}))[0] == 201
    await c.settled_graph("g")
    status, nodes = await c.call("GET", "nodes/")
    assert (status, nodes["namespace"], nodes["count"]) == (200, ns, 2)
    assert [
        {k: v for k, v in n.items() if k not in ("_id", "created_at", "updated_at")} for n in nodes["nodes"]
    ] == [
        {
            "name": name,
            "namespace": ns,
            "runtime_name": "r",
            "runtime_namespace": ns,
            "inputs_schema": TEXT_SCHEMA,
            "outputs_schema": TEXT_SCHEMA,
            "secrets": [],
        }
        for name in ("Step", "Other")
    ]
    status, graphs = await c.call("GET", "graphs/")
    assert (status, graphs["namespace"], graphs["count"]) == (200, ns, 1)
    (graph,) = graphs["templates"]
    assert set(graph) == {
        "_id",
        "created_at",
        "updated_at",
        "name",
        "namespace",
        "nodes",
        "validation_status",
        "validation_errors",
        "secrets",
        "triggers",
        "retry_policy",
        "store_config",
    }
    assert (graph["name"], graph["validation_status"], list(graph["secrets"])) == ("g", "VALID", ["s"])
    assert graph["secrets"]["s"] != "v"  # never in clear
    status, spaces = await c.call("GET", "/v0/namespaces")
    assert status == 200 and ns in spaces["namespaces"] and spaces["count"] == len(spaces["namespaces"])
    assert spaces["namespaces"] == sorted(spaces["namespaces"])


async def test_bad_requests_never_disturb_a_running_run(server: Server) -> None:
    namespace = new_namespace("noise")
    noisy = Client(server, namespace)
    client = server.client(namespace)
    async with server.runtime(namespace, cg.NODES):
        await cg.upsert(client, namespace=namespace)
        run_id = (await client.trigger(cg.GRAPH, store={"topic": uuid.uuid4().hex}))["run_id"]
        noise = 0
        while await server.run_status(run_id) == "PENDING" and noise < 200:
            for state in await server.histories(run_id):
                await noisy.call("POST", f"state/{state.id}/executed", {"outputs": []}, key="wrong")
                await noisy.call("POST", f"state/{state.id}/errored", raw=b"[")
                await noisy.call("POST", f"state/{state.id}/prune", {"data": "x"})
                await noisy.call("POST", "graph/absent/trigger", {"store": {}})
                noise += 1
        states = await server.wait_for_run(run_id, until=lambda s: any(x.identifier == "finish" for x in s))
    assert noise > 0 and await server.run_status(run_id) == "SUCCESS"
    assert sorted(s.identifier for s in states) == sorted(
        ["start", "audit", "prep"] + ["split"] * 3 + ["work"] * 3 + ["merge"] + ["flaky"] * 3 + ["finish"]
    )


async def test_missing_outputs_end_in_next_created_error_with_upstreams_text(
    client: Client, server: Server
) -> None:
    c = client
    await c.register("Step")
    nodes = [c.node("a", next_nodes=["b"]), c.node("b", {"text": "${{ a.outputs.text }}"})]
    assert (await c.put_graph("g", nodes))[0] == 201
    await c.settled_graph("g")
    run_id = (await c.call("POST", "graph/g/trigger", {}))[1]["run_id"]
    _, queued = await c.call("POST", "states/enqueue", {"nodes": ["Step"], "batch_size": 1})
    state_id = queued["states"][0]["state_id"]
    assert await c.call("POST", f"state/{state_id}/executed", {"outputs": [{"other": "x"}]}) == (
        200,
        {"status": "EXECUTED"},
    )
    states = await server.wait_for_run(run_id)
    assert [s.statuses for s in states] == [("CREATED", "QUEUED", "EXECUTED", "NEXT_CREATED_ERROR")]
    assert await server.run_status(run_id) == "FAILED"
    details = await server.details(c.namespace, "g", run_id, state_id)
    assert details["error"] == "Output field 'text' not found on current state 'a' for template 'b'"
