"""A small demo: a three-node graph run by the real exospherehost SDK on the embedded state manager."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from exospherehost import BaseNode, GraphNodeModel, Runtime, StateManager, StoreConfigModel
from pydantic import BaseModel

from exo_otel.embedded import EmbeddedStateManager

NAMESPACE = "exo-otel-demo"
GRAPH = "demo"
TIMEOUT_S = 30.0


class Greet(BaseNode):  # type: ignore[misc]  # exospherehost ships no type information
    class Inputs(BaseModel):
        name: str

    class Outputs(BaseModel):
        greeting: str

    async def execute(self) -> BaseNode.Outputs:
        return self.Outputs(greeting=f"hello {self.inputs.name}")


class Shout(BaseNode):  # type: ignore[misc]  # exospherehost ships no type information
    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        loud: str

    async def execute(self) -> list[BaseNode.Outputs]:
        return [self.Outputs(loud=self.inputs.text.upper()), self.Outputs(loud=self.inputs.text.title())]


class Echo(BaseNode):  # type: ignore[misc]  # exospherehost ships no type information
    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        echoed: str

    async def execute(self) -> BaseNode.Outputs:
        return self.Outputs(echoed=self.inputs.text)


def _graph() -> list[GraphNodeModel]:
    return [
        GraphNodeModel(node_name="Greet", namespace=NAMESPACE, identifier="greet",
                       inputs={"name": "${{ store.name }}"}, next_nodes=["shout"]),
        GraphNodeModel(node_name="Shout", namespace=NAMESPACE, identifier="shout",
                       inputs={"text": "${{ greet.outputs.greeting }}"}, next_nodes=["echo"]),
        GraphNodeModel(node_name="Echo", namespace=NAMESPACE, identifier="echo",
                       inputs={"text": "${{ shout.outputs.loud }}"}),
    ]


async def _demo() -> int:
    async with EmbeddedStateManager() as sm:
        runtime = Runtime(namespace=NAMESPACE, name="demo-runtime", nodes=[Greet, Shout, Echo],
                          state_manager_uri=sm.uri, key=sm.api_key, poll_interval=0.05)
        task = runtime.start()
        assert task is not None
        try:
            client = StateManager(namespace=NAMESPACE, state_manager_uri=sm.uri, key=sm.api_key)
            deadline = time.monotonic() + TIMEOUT_S
            while sm.registered_nodes(NAMESPACE) != {"Greet", "Shout", "Echo"}:
                if task.done() or time.monotonic() > deadline:
                    print("demo: the runtime did not register its nodes")
                    return 1
                await asyncio.sleep(0.02)
            await client.upsert_graph(GRAPH, _graph(), {}, store_config=StoreConfigModel(
                default_values={"name": "exosphere"}), polling_interval=0.05)
            run_id = (await client.trigger(GRAPH))["run_id"]
            print(f"run id: {run_id}")
            while (status := sm.run_status(run_id)) == "PENDING" and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            print(f"run status: {status}")
            return 0 if status == "SUCCESS" else 1
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def run_demo() -> int:
    """Run the demo; the exit status is 0 when the run succeeded."""
    # The SDK logs every poll at INFO; the demo prints its own summary instead.
    logging.getLogger("exospherehost").setLevel(logging.WARNING)
    return asyncio.run(_demo())
