"""The 11-state test graph (docs/state-manager-side.md, section "How it is tested"), as the real
upstream state manager accepts it: 11 states per run.

::

    start ──► split (fans out 3) ──► work (#2 re-enqueues once, #3 prunes) ──► merge (unites start)
                                                                    └──► flaky (fails once) ──► finish

States per run: start, split + 2 fan-out copies, 3 work, merge, 2 flaky (a retry), finish = 11.
Node behaviour is deterministic per run and per process as long as each run has its own ``topic``.
"""

from __future__ import annotations

import collections
import os
from datetime import timedelta

import aiohttp
from exospherehost import (
    BaseNode,
    GraphNodeModel,
    PruneSignal,
    ReQueueAfterSignal,
    RetryPolicyModel,
    RetryStrategyEnum,
    StateManager,
    StoreConfigModel,
    UnitesModel,
    UnitesStrategyEnum,
)
from opentelemetry import baggage
from pydantic import BaseModel

GRAPH = "issue-graph"
STATES_PER_RUN = 11
RETRY_POLICY = RetryPolicyModel(
    max_retries=3, strategy=RetryStrategyEnum.EXPONENTIAL, backoff_factor=40, exponent=2
)
ATTEMPTS: collections.Counter[tuple[str, str]] = collections.Counter()
# Where node code reports the baggage it sees, with an aiohttp call (set for cross-process tests).
BAGGAGE_ECHO_URI = "EXO_OTEL_BAGGAGE_ECHO_URI"


def _attempt(node: str, key: str) -> int:
    ATTEMPTS[(node, key)] += 1
    return ATTEMPTS[(node, key)]


# The baggage each node saw, in this process.
SEEN: list[dict[str, str]] = []


async def _observe() -> None:
    """Note the baggage this node sees; POST it to the echo server (whose ``baggage`` header is the
    propagated one) when one is set."""
    seen = {str(k): str(v) for k, v in baggage.get_all().items()}
    SEEN.append(seen)
    echo = os.environ.get(BAGGAGE_ECHO_URI)
    if echo:
        async with aiohttp.ClientSession() as session, session.post(echo, json=seen) as answer:
            answer.raise_for_status()


class Start(BaseNode):
    class Inputs(BaseModel):
        topic: str

    class Outputs(BaseModel):
        seed: str

    async def execute(self) -> BaseNode.Outputs:
        await _observe()
        return self.Outputs(seed=f"seed:{self.inputs.topic}")


class Split(BaseNode):
    class Inputs(BaseModel):
        seed: str

    class Outputs(BaseModel):
        item: str

    async def execute(self) -> list[BaseNode.Outputs]:
        await _observe()
        return [self.Outputs(item=f"{self.inputs.seed}#{index}") for index in (1, 2, 3)]


class Work(BaseNode):
    class Inputs(BaseModel):
        item: str

    class Outputs(BaseModel):
        result: str

    async def execute(self) -> BaseNode.Outputs:
        await _observe()
        item = self.inputs.item
        if item.endswith("#3"):
            raise PruneSignal({"skipped": item})
        if item.endswith("#2") and _attempt("work", item) == 1:
            raise ReQueueAfterSignal(timedelta(milliseconds=100))
        return self.Outputs(result=f"done:{item}")


class Merge(BaseNode):
    class Inputs(BaseModel):
        seed: str

    class Outputs(BaseModel):
        summary: str

    async def execute(self) -> BaseNode.Outputs:
        await _observe()
        return self.Outputs(summary=f"merged {self.inputs.seed}")


class Flaky(BaseNode):
    class Inputs(BaseModel):
        summary: str

    class Outputs(BaseModel):
        value: str

    async def execute(self) -> BaseNode.Outputs:
        await _observe()
        if _attempt("flaky", self.inputs.summary) == 1:
            raise RuntimeError("flaky failure")
        return self.Outputs(value=f"{self.inputs.summary} checked")


class Finish(BaseNode):
    class Inputs(BaseModel):
        value: str

    class Outputs(BaseModel):
        report: str

    async def execute(self) -> BaseNode.Outputs:
        await _observe()
        return self.Outputs(report=self.inputs.value)


NODES: list[type[BaseNode]] = [Start, Split, Work, Merge, Flaky, Finish]


def graph_nodes(namespace: str) -> list[GraphNodeModel]:
    def node(cls: type[BaseNode], identifier: str, inputs: dict[str, str], **extra: object) -> GraphNodeModel:
        return GraphNodeModel(
            node_name=cls.__name__, namespace=namespace, identifier=identifier, inputs=inputs, **extra
        )

    return [
        node(Start, "start", {"topic": "${{ store.topic }}"}, next_nodes=["split"]),
        node(Split, "split", {"seed": "${{ start.outputs.seed }}"}, next_nodes=["work"]),
        node(Work, "work", {"item": "${{ split.outputs.item }}"}, next_nodes=["merge"]),
        node(
            Merge,
            "merge",
            {"seed": "${{ start.outputs.seed }}"},
            next_nodes=["flaky"],
            unites=UnitesModel(identifier="start", strategy=UnitesStrategyEnum.ALL_DONE),
        ),
        # Upstream 0.0.3 does not count a unites node as a parent of its children: flaky reads start.
        node(Flaky, "flaky", {"summary": "${{ start.outputs.seed }}"}, next_nodes=["finish"]),
        node(Finish, "finish", {"value": "${{ flaky.outputs.value }}"}),
    ]


async def upsert(client: StateManager, namespace: str, graph: str = GRAPH) -> None:
    await client.upsert_graph(
        graph,
        graph_nodes(namespace),
        {},
        retry_policy=RETRY_POLICY,
        store_config=StoreConfigModel(required_keys=["topic"]),
        polling_interval=0.1,
    )  # type: ignore[arg-type]
