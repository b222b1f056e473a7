"""Runs that never settle, and a new run beside them: the steps of tests/server/test_stuck_runs.py and
benchmarks/stuck_runs.py (issue 24: any number of stuck runs never delays another run's spans).

Stuck runs: a one-node graph in a namespace whose runtime registered its node and stopped, so every
run's state stays CREATED. The new run: a three-node chain in another namespace with its runtime
polling, triggered by plain HTTP; timed from the trigger to its root, to all its node spans, to its
outcome, as the spans reach wherever the test collects them, and to the server's runs API answering it
settled (about every 0.1 s: what the server itself took, with or without the side).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from exospherehost import BaseNode, GraphNodeModel, StoreConfigModel
from pydantic import BaseModel

from exo_otel.core.ids import format_trace_id, run_span_id
from helpers.otlp_receiver import Span
from helpers.servers import Server

STUCK_GRAPH = "stuck"
NEW_GRAPH = "beside-stuck"


class Parked(BaseNode):
    """Registered, never executed: its runtime is gone."""

    class Inputs(BaseModel):
        topic: str

    class Outputs(BaseModel):
        topic: str

    async def execute(self) -> BaseNode.Outputs:
        return self.Outputs(topic=self.inputs.topic)


class Step(BaseNode):
    class Inputs(BaseModel):
        topic: str

    class Outputs(BaseModel):
        topic: str

    async def execute(self) -> BaseNode.Outputs:
        return self.Outputs(topic=self.inputs.topic)


def topic_graph(namespace: str, node: str, identifiers: list[str]) -> list[GraphNodeModel]:
    nodes = []
    for index, identifier in enumerate(identifiers):
        source = "${{ store.topic }}" if index == 0 else f"${{{{ {identifiers[index - 1]}.outputs.topic }}}}"
        following = identifiers[index + 1 : index + 2]
        nodes.append(GraphNodeModel(node_name=node, namespace=namespace, identifier=identifier,
                                    inputs={"topic": source}, next_nodes=following or None))
    return nodes


async def upsert_chain(server: Server, namespace: str, graph: str, nodes: list[GraphNodeModel]) -> None:
    await server.client(namespace).upsert_graph(
        graph, nodes, {}, store_config=StoreConfigModel(required_keys=["topic"])
    )  # type: ignore[arg-type]


async def trigger(server: Server, session: aiohttp.ClientSession, namespace: str, graph: str) -> str:
    url = f"{server.uri}/v0/namespace/{namespace}/graph/{graph}/trigger"
    async with session.post(
        url, json={"store": {"topic": uuid.uuid4().hex}}, headers={"x-api-key": server.api_key}
    ) as answer:
        answer.raise_for_status()
        return str((await answer.json())["run_id"])


async def open_stuck_runs(server: Server, count: int) -> str:
    """``count`` runs that never settle; their namespace."""
    namespace = f"stuck-{uuid.uuid4().hex[:8]}"
    async with server.runtime(namespace, [Parked]):
        pass  # registered, then gone
    await upsert_chain(server, namespace, STUCK_GRAPH, topic_graph(namespace, "Parked", ["parked"]))
    limit = asyncio.Semaphore(32)
    async with aiohttp.ClientSession() as session:

        async def one() -> str:
            async with limit:
                return await trigger(server, session, namespace, STUCK_GRAPH)

        await asyncio.gather(*(one() for _ in range(count)))
    return namespace


@dataclass
class NewRun:
    root_s: float  # trigger to its root collected
    nodes_s: float  # trigger to all three node spans collected
    outcome_s: float  # trigger to its outcome collected
    settled_s: float  # trigger to the server's runs API answering it settled (3 states, none pending)


async def _settled(server: Server, session: aiohttp.ClientSession, namespace: str, run_id: str) -> bool:
    url = f"{server.uri}/v0/namespace/{namespace}/runs/1/10"
    async with session.get(url, headers={"x-api-key": server.api_key}) as answer:
        answer.raise_for_status()
        runs = (await answer.json())["runs"]
    return any(r["run_id"] == run_id and r["pending_count"] == 0 and r["total_count"] >= 3 for r in runs)


async def time_a_new_run(
    server: Server, spans: Callable[[], list[Span]] | None, timeout: float = 120.0
) -> NewRun:
    """One run of the three-node chain beside whatever else is open, timed as its spans are collected
    and as the server's runs API sees it settle. ``spans`` None (a server without the side): the
    settling alone is timed, the span times are then NaN."""
    namespace = f"beside-{uuid.uuid4().hex[:8]}"
    wanted = {"root", "nodes", "outcome", "settled"} if spans is not None else {"settled"}
    async with server.runtime(namespace, [Step]), aiohttp.ClientSession() as session:
        chain = topic_graph(namespace, "Step", ["one", "two", "three"])
        await upsert_chain(server, namespace, NEW_GRAPH, chain)
        started = time.monotonic()
        run_id = await trigger(server, session, namespace, NEW_GRAPH)
        trace_id, root_id = format_trace_id(run_id), f"{run_span_id(run_id):016x}"
        seen: dict[str, float] = {}
        polls = 0
        while not wanted <= set(seen) and time.monotonic() - started < timeout:
            collected = spans() if spans is not None else []
            names = [(s.span_id, s.name) for s in collected if s.trace_id == trace_id]
            now = time.monotonic() - started
            if any(span_id == root_id for span_id, _ in names):
                seen.setdefault("root", now)
            if sum(1 for _, name in names if name.startswith("node ")) >= 3:
                seen.setdefault("nodes", now)
            if any(name == f"settle {NEW_GRAPH}" for _, name in names):
                seen.setdefault("outcome", now)
            polls += 1
            asking = "settled" not in seen and polls % 5 == 0
            if asking and await _settled(server, session, namespace, run_id):
                seen["settled"] = time.monotonic() - started
            await asyncio.sleep(0.02)
    missing = wanted - set(seen)
    if missing:
        raise AssertionError(f"the new run's {sorted(missing)} did not come within {timeout} s")
    nan = float("nan")
    return NewRun(seen.get("root", nan), seen.get("nodes", nan), seen.get("outcome", nan), seen["settled"])
