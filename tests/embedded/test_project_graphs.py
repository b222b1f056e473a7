"""The project's three graphs (demo, deploy example, conformance) are accepted and run to their end,
on the embedded state manager and on the real upstream one."""

from __future__ import annotations

import importlib.util
import sys
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from exo_otel_demo import graph as demo_graph
from helpers import conformance_graph
from helpers.servers import Server, StateRecord, by_identifier

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "deploy" / "jaeger" / "example"
C, Q, E, S, RETRY, ERRORED = "CREATED", "QUEUED", "EXECUTED", "SUCCESS", "RETRY_CREATED", "ERRORED"


def _namespace(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def _load_example(name: str) -> ModuleType:
    """A fresh copy of a module of deploy/jaeger/example (its globals can be changed per test)."""
    if str(EXAMPLE_DIR) not in sys.path:
        sys.path.insert(0, str(EXAMPLE_DIR))
    spec = importlib.util.spec_from_file_location(f"graphs_example_{name}", EXAMPLE_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def _details(server: Server, namespace: str, graph: str, run_id: str, state: StateRecord) -> Any:
    path = f"/v0/namespace/{namespace}/graph/{graph}/run/{run_id}/node/{state.id}"
    status, body = await server.request("GET", path)
    assert status == 200, body
    return body


def _has(identifier: str) -> Any:
    return lambda states: any(s.identifier == identifier and s.status == S for s in states)


async def test_demo_graph_runs_to_its_end(server: Server) -> None:
    namespace = _namespace("demo")
    client = server.client(namespace)
    batch = f"batch-{uuid.uuid4().hex[:8]}"
    async with server.runtime(namespace, demo_graph.NODES):
        graph = await client.upsert_graph(
            demo_graph.GRAPH_NAME, demo_graph.graph_nodes(namespace), {},
            retry_policy=demo_graph.RETRY_POLICY, polling_interval=0.1,
        )
        assert graph["validation_status"] == "VALID", graph
        answer = await client.trigger(demo_graph.GRAPH_NAME, inputs={"batch_id": batch, "size": "4"})
        states = await server.wait_for_run(answer["run_id"], until=_has("publish"))
    by = by_identifier(states)
    counts = {"fetch": 1, "split": 4, "score": 5, "merge": 1, "publish": 1}
    assert {k: len(v) for k, v in by.items()} == counts
    assert sorted(s.statuses for s in by["score"]) == sorted([(C, Q, E, S)] * 4 + [(C, Q, RETRY)])
    assert by["merge"][0].statuses == by["publish"][0].statuses == (C, Q, E, S)
    assert all(s.status != ERRORED for s in states)
    publish = await _details(server, namespace, demo_graph.GRAPH_NAME, answer["run_id"], by["publish"][0])
    assert publish["outputs"] == {"published": f"batch {batch} scored"}


@pytest.mark.parametrize("failure_rate", [0.0, 1.0])
async def test_deploy_example_graph_runs_to_its_end(server: Server, failure_rate: float) -> None:
    example = _load_example("demo_graph")
    runtime = _load_example("runtime")
    runtime.FAILURE_RATE, runtime.PRUNE_RATE, runtime.REQUEUE_RATE = failure_rate, 0.0, 0.0
    namespace = _namespace("deploy")
    client = server.client(namespace)
    batch = f"batch-{uuid.uuid4().hex[:8]}"
    async with server.runtime(namespace, runtime.NODES):
        graph = await client.upsert_graph(
            example.GRAPH_NAME, example.graph_nodes(namespace), {},
            retry_policy=example.retry_policy(), polling_interval=0.1,
        )
        assert graph["validation_status"] == "VALID", graph
        answer = await client.trigger(example.GRAPH_NAME, inputs={"batch_id": batch, "size": "3"})
        run_id = answer["run_id"]
        if failure_rate == 1.0:
            # Every item errors after its retry. The join is only considered when a branch EXECUTES, so
            # an errored last branch leaves merge uncreated and the run FAILED: upstream does the same.
            states = await server.wait_for_run(run_id)
            by = by_identifier(states)
            assert sorted(s.status for s in by["score"]) == [ERRORED] * 3 + [RETRY] * 3
            assert "merge" not in by and await server.run_status(run_id) == "FAILED"
            return
        states = await server.wait_for_run(run_id, until=_has("publish"))
    by = by_identifier(states)
    assert [len(by[k]) for k in ("fetch", "split", "score", "merge", "publish")] == [1, 3, 3, 1, 1]
    assert [s.status for s in by["score"]] == [S] * 3
    assert await server.run_status(run_id) == "SUCCESS"
    publish = await _details(server, namespace, example.GRAPH_NAME, run_id, by["publish"][0])
    assert publish["inputs"] == {"summary": f"{batch}: all items done"}


async def test_conformance_graph_runs_to_its_end(server: Server) -> None:
    namespace = _namespace("conformance")
    client = server.client(namespace)
    nodes = conformance_graph.graph_nodes()
    for node in nodes:
        node.namespace = namespace
    async with server.runtime(namespace, conformance_graph.NODES):
        graph = await client.upsert_graph(
            conformance_graph.GRAPH, nodes, conformance_graph.SECRETS,
            retry_policy=conformance_graph.RETRY_POLICY, store_config=conformance_graph.STORE_CONFIG,
            polling_interval=0.1,
        )
        assert graph["validation_status"] == "VALID", graph
        answer = await client.trigger(conformance_graph.GRAPH, store={"topic": uuid.uuid4().hex})
        states = await server.wait_for_run(answer["run_id"], until=_has("finish"))
    by = by_identifier(states)
    assert sorted(by) == ["audit", "finish", "flaky", "merge", "prep", "split", "start", "work"]
    assert [s.statuses for s in by["flaky"]] == [(C, Q, RETRY), (C, Q, RETRY), (C, Q, E, S)]
    assert await server.run_status(answer["run_id"]) == "SUCCESS"
