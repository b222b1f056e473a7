"""The conformance graph: nine nodes exercising every behaviour of the state manager API
(docs/embedded-state-manager.md, section "What it serves").

::

    start ──► audit (prunes) ──► audit_log (never created)
      └─────► prep ──► split (fans out 3) ──► work (#2 re-enqueues once; #3 prunes when lenient)
                │                                   │
                └──── merge (unites prep) ◄─────────┘
                        └──► flaky (fails twice, then succeeds) ──► finish (needs a secret)

A child of a unites node cannot read that node's outputs upstream (its parents are the united node
and that node's ancestors), so flaky reads prep's batch and the store, never merge's summary.

Store: ``topic`` is required (the trigger gives it), ``prefix`` and ``mode`` have defaults.
Node behaviour is deterministic per run as long as each run uses its own ``topic``.
"""

from __future__ import annotations

import collections
from datetime import timedelta
from typing import Any

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

NAMESPACE = "exo-otel-conformance"
GRAPH = "conformance"
SECRETS = {"token": "conformance-token"}
REQUEUE_DELAY_MS = 100
FAILURES_BEFORE_SUCCESS = 2
RETRY_POLICY = RetryPolicyModel(
    max_retries=3, strategy=RetryStrategyEnum.EXPONENTIAL, backoff_factor=40, exponent=2
)
STORE_CONFIG = StoreConfigModel(required_keys=["topic"], default_values={"prefix": "item", "mode": "strict"})

# How many times each node saw each input; keyed by (node, input) so runs with distinct topics
# never interfere.
ATTEMPTS: collections.Counter[tuple[str, str]] = collections.Counter()


def _attempt(node: str, key: str) -> int:
    ATTEMPTS[(node, key)] += 1
    return ATTEMPTS[(node, key)]


class StartNode(BaseNode):
    class Inputs(BaseModel):
        topic: str
        prefix: str

    class Outputs(BaseModel):
        seed: str

    async def execute(self) -> BaseNode.Outputs:
        return self.Outputs(seed=f"{self.inputs.prefix}:{self.inputs.topic}")


class AuditNode(BaseNode):
    class Inputs(BaseModel):
        seed: str

    class Outputs(BaseModel):
        note: str

    async def execute(self) -> BaseNode.Outputs:
        raise PruneSignal({"reason": "audit is off", "seed": self.inputs.seed})


class AuditLogNode(BaseNode):
    class Inputs(BaseModel):
        note: str

    class Outputs(BaseModel):
        logged: str

    async def execute(self) -> BaseNode.Outputs:
        return self.Outputs(logged=self.inputs.note)


class PrepNode(BaseNode):
    class Inputs(BaseModel):
        seed: str

    class Outputs(BaseModel):
        batch: str

    async def execute(self) -> BaseNode.Outputs:
        return self.Outputs(batch=f"{self.inputs.seed}/batch")


class SplitNode(BaseNode):
    class Inputs(BaseModel):
        batch: str

    class Outputs(BaseModel):
        item: str

    async def execute(self) -> list[BaseNode.Outputs]:
        return [self.Outputs(item=f"{self.inputs.batch}#{index}") for index in (1, 2, 3)]


class WorkNode(BaseNode):
    class Inputs(BaseModel):
        item: str
        mode: str

    class Outputs(BaseModel):
        result: str

    async def execute(self) -> BaseNode.Outputs:
        item = self.inputs.item
        if self.inputs.mode == "lenient" and item.endswith("#3"):
            raise PruneSignal({"skipped": item})
        if item.endswith("#2") and _attempt("work", item) == 1:
            raise ReQueueAfterSignal(timedelta(milliseconds=REQUEUE_DELAY_MS))
        return self.Outputs(result=f"done:{item}")


class MergeNode(BaseNode):
    class Inputs(BaseModel):
        batch: str
        topic: str

    class Outputs(BaseModel):
        summary: str

    async def execute(self) -> BaseNode.Outputs:
        return self.Outputs(summary=f"{self.inputs.batch} merged for {self.inputs.topic}")


class FlakyNode(BaseNode):
    class Inputs(BaseModel):
        summary: str

    class Outputs(BaseModel):
        value: str

    async def execute(self) -> BaseNode.Outputs:
        attempt = _attempt("flaky", self.inputs.summary)
        if attempt <= FAILURES_BEFORE_SUCCESS:
            raise RuntimeError(f"flaky failure {attempt}")
        return self.Outputs(value=f"{self.inputs.summary} checked")


class FinishNode(BaseNode):
    class Inputs(BaseModel):
        value: str
        seed: str

    class Outputs(BaseModel):
        report: str

    class Secrets(BaseModel):
        token: str

    async def execute(self) -> BaseNode.Outputs:
        return self.Outputs(report=f"{self.inputs.value} by {self.inputs.seed} ({len(self.secrets.token)})")


NODES: list[type[BaseNode]] = [
    StartNode,
    AuditNode,
    AuditLogNode,
    PrepNode,
    SplitNode,
    WorkNode,
    MergeNode,
    FlakyNode,
    FinishNode,
]


def graph_nodes(
    strategy: UnitesStrategyEnum = UnitesStrategyEnum.ALL_SUCCESS, namespace: str = NAMESPACE
) -> list[GraphNodeModel]:
    """The node templates; ``strategy`` is how merge waits for the branches under prep."""

    def node(cls: type[BaseNode], identifier: str, inputs: dict[str, str], **extra: object) -> GraphNodeModel:
        return GraphNodeModel(
            node_name=cls.__name__, namespace=namespace, identifier=identifier, inputs=inputs, **extra
        )

    return [
        node(
            StartNode,
            "start",
            {"topic": "${{ store.topic }}", "prefix": "${{ store.prefix }}"},
            next_nodes=["prep", "audit"],
        ),
        node(AuditNode, "audit", {"seed": "${{ start.outputs.seed }}"}, next_nodes=["audit_log"]),
        node(AuditLogNode, "audit_log", {"note": "${{ audit.outputs.note }}"}),
        node(PrepNode, "prep", {"seed": "${{ start.outputs.seed }}"}, next_nodes=["split"]),
        node(SplitNode, "split", {"batch": "${{ prep.outputs.batch }}"}, next_nodes=["work"]),
        node(
            WorkNode,
            "work",
            {"item": "${{ split.outputs.item }}", "mode": "${{ store.mode }}"},
            next_nodes=["merge"],
        ),
        node(
            MergeNode,
            "merge",
            {"batch": "${{ prep.outputs.batch }}", "topic": "${{ store.topic }}"},
            next_nodes=["flaky"],
            unites=UnitesModel(identifier="prep", strategy=strategy),
        ),
        # A child of a unites node may not read the unites node's outputs (upstream: "merge is not a
        # parent of flaky"); its parents are prep and prep's ancestors, so flaky rebuilds the summary.
        node(
            FlakyNode,
            "flaky",
            {"summary": "${{ prep.outputs.batch }} merged for ${{ store.topic }}"},
            next_nodes=["finish"],
        ),
        node(
            FinishNode, "finish", {"value": "${{ flaky.outputs.value }}", "seed": "${{ start.outputs.seed }}"}
        ),
    ]


async def upsert(
    client: StateManager,
    strategy: UnitesStrategyEnum = UnitesStrategyEnum.ALL_SUCCESS,
    namespace: str = NAMESPACE,
) -> Any:
    """Upsert the conformance graph through the SDK and wait until it is valid (its nodes registered)."""
    return await client.upsert_graph(
        GRAPH,
        graph_nodes(strategy, namespace),
        SECRETS,
        retry_policy=RETRY_POLICY,
        store_config=STORE_CONFIG,
        polling_interval=0.05,  # type: ignore[arg-type]
    )
