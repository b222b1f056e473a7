"""Two runtimes polling one state manager: every state is handed out and executed exactly once."""

from __future__ import annotations

import collections

from exospherehost import BaseNode, GraphNodeModel
from pydantic import BaseModel

from exo_otel_demo.embedded import EmbeddedStateManager
from helpers.sm_fixtures import POLL_INTERVAL, running_runtime, sdk_state_manager, wait_for_run

NAMESPACE = "concurrency"
FAN_OUT = 200


class Burst(BaseNode):
    class Inputs(BaseModel):
        size: str

    class Outputs(BaseModel):
        index: str

    async def execute(self) -> list[BaseNode.Outputs]:
        return [self.Outputs(index=str(i)) for i in range(int(self.inputs.size))]


def _leaf(runtime: str, seen: collections.Counter[tuple[str, str]]) -> type[BaseNode]:
    """A ``Leaf`` node class counting, per runtime, the indices it executed."""

    class Leaf(BaseNode):
        class Inputs(BaseModel):
            index: str

        class Outputs(BaseModel):
            done: str

        async def execute(self) -> BaseNode.Outputs:
            seen[(runtime, self.inputs.index)] += 1
            return self.Outputs(done=self.inputs.index)

    return Leaf


async def test_two_runtimes_execute_each_state_exactly_once(state_manager: EmbeddedStateManager) -> None:
    sm = state_manager
    seen: collections.Counter[tuple[str, str]] = collections.Counter()
    graph = [
        GraphNodeModel(node_name="Burst", namespace=NAMESPACE, identifier="burst",
                       inputs={"size": str(FAN_OUT)}, next_nodes=["leaf"]),
        GraphNodeModel(node_name="Leaf", namespace=NAMESPACE, identifier="leaf",
                       inputs={"index": "${{ burst.outputs.index }}"}),
    ]
    async with (
        running_runtime(sm, NAMESPACE, [Burst, _leaf("one", seen)], name="one", workers=4),
        running_runtime(sm, NAMESPACE, [Burst, _leaf("two", seen)], name="two", workers=4),
    ):
        client = sdk_state_manager(sm, NAMESPACE)
        await client.upsert_graph("burst", graph, {}, polling_interval=POLL_INTERVAL)
        run_id = (await client.trigger("burst"))["run_id"]
        assert await wait_for_run(sm, run_id, timeout=60) == "SUCCESS"

    leaves = [s for s in sm.states(run_id) if s.identifier == "leaf"]
    assert len(leaves) == FAN_OUT
    assert sorted(int(s.inputs["index"]) for s in leaves) == list(range(FAN_OUT))
    assert all(s.statuses == ["CREATED", "QUEUED", "EXECUTED", "SUCCESS"] for s in leaves)
    executions = collections.Counter(index for (_, index) in seen.elements())
    assert executions == {str(i): 1 for i in range(FAN_OUT)}
    assert {runtime for runtime, _ in seen} == {"one", "two"}  # both runtimes took part
    bursts = [s for s in sm.states(run_id) if s.identifier == "burst"]
    assert len(bursts) == FAN_OUT and sum(s.statuses.count("QUEUED") for s in bursts) == 1
