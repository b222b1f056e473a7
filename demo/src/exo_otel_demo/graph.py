"""The demo's graph: split fans out, one score fails once and is retried, merge unites the branches.

::

    fetch ──► split ──► score (one per item; item #2 fails on its first attempt) ──► merge ──► publish
      └───────────────────────────── merge unites fetch (ALL_DONE) ◄──────────────────┘

A fan-out makes copies of the split state, one per extra output, so the branches share no split
state: merge unites `fetch`, the node above the fan-out, and runs once per run. Node names match the
deploy/jaeger example, so the Grafana dashboard shows the demo's series too.
"""

from __future__ import annotations

import collections
from typing import Final

from exospherehost import (
    BaseNode,
    GraphNodeModel,
    RetryPolicyModel,
    RetryStrategyEnum,
    UnitesModel,
    UnitesStrategyEnum,
)
from pydantic import BaseModel

NAMESPACE: Final = "exo-otel-demo"
GRAPH_NAME: Final = "score-batch"
ITEMS_PER_RUN: Final = 4
FLAKY_ITEM: Final = 2
"""The item (1-based) whose first ScoreItem attempt raises, so the run shows a retry."""
FAILURE_TEXT: Final = "scoring service timed out"

# Small delays so the demo finishes in about a second; the retry still shows in the waterfall.
RETRY_POLICY: Final = RetryPolicyModel(max_retries=2, strategy=RetryStrategyEnum.FIXED, backoff_factor=50)

# Attempts per item, in this process; items carry their batch id, so runs never share a key.
_ATTEMPTS: collections.Counter[str] = collections.Counter()


class ScoringError(RuntimeError):
    """The transient failure ScoreItem raises once per run."""


class FetchBatch(BaseNode):  # type: ignore[misc]  # exospherehost ships no type information
    """Starts the run: names the batch and its size."""

    class Inputs(BaseModel):
        batch_id: str
        size: str

    class Outputs(BaseModel):
        batch_id: str
        size: str

    async def execute(self) -> BaseNode.Outputs:
        return self.Outputs(batch_id=self.inputs.batch_id, size=self.inputs.size)


class SplitBatch(BaseNode):  # type: ignore[misc]  # exospherehost ships no type information
    """Fans out: one output, hence one `score` state, per item of the batch."""

    class Inputs(BaseModel):
        batch_id: str
        size: str

    class Outputs(BaseModel):
        item: str

    async def execute(self) -> list[BaseNode.Outputs]:
        batch = self.inputs.batch_id
        size = int(self.inputs.size)
        return [self.Outputs(item=f"{batch}#{index}") for index in range(1, size + 1)]


class ScoreItem(BaseNode):  # type: ignore[misc]  # exospherehost ships no type information
    """Scores one item; the flaky item fails on its first attempt and succeeds when retried."""

    class Inputs(BaseModel):
        item: str

    class Outputs(BaseModel):
        score: str

    async def execute(self) -> BaseNode.Outputs:
        item = self.inputs.item
        _ATTEMPTS[item] += 1
        if item.endswith(f"#{FLAKY_ITEM}") and _ATTEMPTS[item] == 1:
            raise ScoringError(f"{FAILURE_TEXT} for {item}")
        return self.Outputs(score=str(sum(map(ord, item)) % 100))


class MergeScores(BaseNode):  # type: ignore[misc]  # exospherehost ships no type information
    """Unites the branches under `fetch`: runs once, after every item is done."""

    class Inputs(BaseModel):
        batch_id: str

    class Outputs(BaseModel):
        summary: str

    async def execute(self) -> BaseNode.Outputs:
        return self.Outputs(summary=f"batch {self.inputs.batch_id} scored")


class PublishReport(BaseNode):  # type: ignore[misc]  # exospherehost ships no type information
    """The last node: publishes the batch's summary (read from `fetch`: merge's outputs are not its own)."""

    class Inputs(BaseModel):
        summary: str

    class Outputs(BaseModel):
        published: str

    async def execute(self) -> BaseNode.Outputs:
        return self.Outputs(published=self.inputs.summary)


NODES: Final[tuple[type[BaseNode], ...]] = (FetchBatch, SplitBatch, ScoreItem, MergeScores, PublishReport)


def graph_nodes(namespace: str = NAMESPACE) -> list[GraphNodeModel]:
    """The node templates of the demo graph."""

    def node(cls: type[BaseNode], identifier: str, inputs: dict[str, str], **extra: object) -> GraphNodeModel:
        return GraphNodeModel(
            node_name=cls.__name__, namespace=namespace, identifier=identifier, inputs=inputs, **extra
        )

    return [
        # Defaults for the root node; each trigger gives its own batch id.
        node(FetchBatch, "fetch", {"batch_id": "batch-0", "size": str(ITEMS_PER_RUN)}, next_nodes=["split"]),
        node(
            SplitBatch,
            "split",
            {"batch_id": "${{ fetch.outputs.batch_id }}", "size": "${{ fetch.outputs.size }}"},
            next_nodes=["score"],
        ),
        node(ScoreItem, "score", {"item": "${{ split.outputs.item }}"}, next_nodes=["merge"]),
        # A unites node reads outputs of the node it unites, not of the branches. ALL_DONE: merge
        # runs even if an item ends errored after its retries.
        node(
            MergeScores,
            "merge",
            {"batch_id": "${{ fetch.outputs.batch_id }}"},
            unites=UnitesModel(identifier="fetch", strategy=UnitesStrategyEnum.ALL_DONE),
            next_nodes=["publish"],
        ),
        # A child of a unites node may not read that node's outputs (upstream refuses the graph: the
        # parents of merge's children are fetch and its ancestors), so publish rebuilds the summary.
        node(PublishReport, "publish", {"summary": "batch ${{ fetch.outputs.batch_id }} scored"}),
    ]
