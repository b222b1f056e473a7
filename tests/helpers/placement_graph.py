"""The placement graph: 11 states per run, accepted by the real upstream state manager.

::

    start ──► audit (prunes)
      └─────► split (fans out 3: the state and 2 copies) ──► work (#2 re-enqueues once)
                                                              │
              merge (unites start, ALL_DONE) ◄────────────────┘
                └──► flaky (fails once, then succeeds: a retry state)

States per run: start, audit, split x3, work x3, merge, flaky x2 = 11. ``flaky`` reads ``start``'s
outputs, not ``merge``'s: upstream lets a child of a unites node read only the united node's lineage.
"""

from __future__ import annotations

import collections
from datetime import timedelta

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
from pydantic import BaseModel

GRAPH = "placement"
STATES_PER_RUN = 11
ATTEMPTS: collections.Counter[tuple[str, str]] = collections.Counter()


def _attempt(node: str, key: str) -> int:
    ATTEMPTS[(node, key)] += 1
    return ATTEMPTS[(node, key)]


class PlaceStart(BaseNode):
    class Inputs(BaseModel):
        topic: str

    class Outputs(BaseModel):
        seed: str

    async def execute(self) -> BaseNode.Outputs:
        return self.Outputs(seed=self.inputs.topic)


class PlaceAudit(BaseNode):
    class Inputs(BaseModel):
        seed: str

    class Outputs(BaseModel):
        note: str

    async def execute(self) -> BaseNode.Outputs:
        raise PruneSignal({"seed": self.inputs.seed})


class PlaceSplit(BaseNode):
    class Inputs(BaseModel):
        seed: str

    class Outputs(BaseModel):
        item: str

    async def execute(self) -> list[BaseNode.Outputs]:
        return [self.Outputs(item=f"{self.inputs.seed}#{index}") for index in (1, 2, 3)]


class PlaceWork(BaseNode):
    class Inputs(BaseModel):
        item: str

    class Outputs(BaseModel):
        result: str

    async def execute(self) -> BaseNode.Outputs:
        if self.inputs.item.endswith("#2") and _attempt("work", self.inputs.item) == 1:
            raise ReQueueAfterSignal(timedelta(milliseconds=100))
        return self.Outputs(result=self.inputs.item)


class PlaceMerge(BaseNode):
    class Inputs(BaseModel):
        seed: str

    class Outputs(BaseModel):
        summary: str

    async def execute(self) -> BaseNode.Outputs:
        return self.Outputs(summary=self.inputs.seed)


class PlaceFlaky(BaseNode):
    class Inputs(BaseModel):
        seed: str

    class Outputs(BaseModel):
        value: str

    async def execute(self) -> BaseNode.Outputs:
        if _attempt("flaky", self.inputs.seed) == 1:
            raise RuntimeError("flaky failure")
        return self.Outputs(value=self.inputs.seed)


NODES: list[type[BaseNode]] = [PlaceStart, PlaceAudit, PlaceSplit, PlaceWork, PlaceMerge, PlaceFlaky]


def graph_nodes(namespace: str) -> list[GraphNodeModel]:
    def node(cls: type[BaseNode], identifier: str, inputs: dict[str, str], **extra: object) -> GraphNodeModel:
        return GraphNodeModel(
            node_name=cls.__name__, namespace=namespace, identifier=identifier, inputs=inputs, **extra
        )

    seed = "${{ start.outputs.seed }}"
    return [
        node(PlaceStart, "start", {"topic": "${{ store.topic }}"}, next_nodes=["split", "audit"]),
        node(PlaceAudit, "audit", {"seed": seed}),
        node(PlaceSplit, "split", {"seed": seed}, next_nodes=["work"]),
        node(PlaceWork, "work", {"item": "${{ split.outputs.item }}"}, next_nodes=["merge"]),
        node(
            PlaceMerge,
            "merge",
            {"seed": seed},
            next_nodes=["flaky"],
            unites=UnitesModel(identifier="start", strategy=UnitesStrategyEnum.ALL_DONE),
        ),
        node(PlaceFlaky, "flaky", {"seed": seed}),
    ]


async def upsert(client: StateManager, namespace: str) -> None:
    """Upsert the placement graph and wait until it is valid (its nodes must be registered)."""
    await client.upsert_graph(
        GRAPH,
        graph_nodes(namespace),
        {},
        retry_policy=RetryPolicyModel(max_retries=2, strategy=RetryStrategyEnum.FIXED, backoff_factor=50),
        store_config=StoreConfigModel(required_keys=["topic"]),
        polling_interval=0.05,  # type: ignore[arg-type]
    )
