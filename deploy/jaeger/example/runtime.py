"""Example Exosphere runtime for the local stack: five nodes with a fan-out, a unites node,
a node that fails now and then, prunes and requeues. Run it under `opentelemetry-instrument`."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

from demo_graph import NAMESPACE, RUNTIME_NAME
from exospherehost import BaseNode, PruneSignal, ReQueueAfterSignal, Runtime
from pydantic import BaseModel

FAILURE_RATE = 0.2
PRUNE_RATE = 0.1
REQUEUE_RATE = 0.2


class FetchBatch(BaseNode):
    """Starts the run: names the batch and its size (the node MergeScores unites)."""

    class Inputs(BaseModel):
        batch_id: str
        size: str

    class Outputs(BaseModel):
        batch_id: str
        size: str

    async def execute(self) -> BaseNode.Outputs:
        await asyncio.sleep(random.uniform(0.01, 0.03))
        return self.Outputs(batch_id=self.inputs.batch_id, size=self.inputs.size)


class SplitBatch(BaseNode):
    """Fan-out: one output, hence one ScoreItem state, per item of the batch."""

    class Inputs(BaseModel):
        batch_id: str
        size: str

    class Outputs(BaseModel):
        item: str

    async def execute(self) -> list[BaseNode.Outputs]:
        size = max(1, min(int(self.inputs.size), 50))
        await asyncio.sleep(random.uniform(0.01, 0.05))
        return [self.Outputs(item=f"item-{i}") for i in range(size)]


class ScoreItem(BaseNode):
    """Slow and flaky on purpose: errors and prunes show up in traces and on the dashboard."""

    class Inputs(BaseModel):
        item: str

    class Outputs(BaseModel):
        score: str

    async def execute(self) -> BaseNode.Outputs:
        await asyncio.sleep(random.lognormvariate(-2.0, 0.8))
        roll = random.random()
        if roll < FAILURE_RATE:
            raise RuntimeError(f"scoring backend timed out for {self.inputs.item}")
        if roll < FAILURE_RATE + PRUNE_RATE:
            raise PruneSignal({"reason": "item filtered out"})
        return self.Outputs(score=f"{random.uniform(0, 1):.3f}")


class MergeScores(BaseNode):
    """Unites FetchBatch: runs once per run, when every ScoreItem under it is done."""

    class Inputs(BaseModel):
        batch_id: str

    class Outputs(BaseModel):
        summary: str

    async def execute(self) -> BaseNode.Outputs:
        await asyncio.sleep(random.uniform(0.02, 0.1))
        return self.Outputs(summary=f"{self.inputs.batch_id}: all items done")


class PublishReport(BaseNode):
    """Sometimes asks to be run again a little later (ReQueueAfterSignal)."""

    class Inputs(BaseModel):
        summary: str

    class Outputs(BaseModel):
        published: str

    async def execute(self) -> BaseNode.Outputs:
        if random.random() < REQUEUE_RATE:
            raise ReQueueAfterSignal(timedelta(seconds=2))
        await asyncio.sleep(random.uniform(0.01, 0.05))
        return self.Outputs(published="true")


NODES: list[type[BaseNode]] = [FetchBatch, SplitBatch, ScoreItem, MergeScores, PublishReport]


def main() -> None:
    # The state manager URI and key come from EXOSPHERE_STATE_MANAGER_URI / EXOSPHERE_API_KEY.
    Runtime(namespace=NAMESPACE, name=RUNTIME_NAME, nodes=NODES).start()


if __name__ == "__main__":
    main()
