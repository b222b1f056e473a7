"""Run by the launcher tests as a user would run their code: no OpenTelemetry set-up of its own."""

from __future__ import annotations

import asyncio
import logging

from exospherehost import BaseNode, GraphNodeModel
from pydantic import BaseModel

from exo_otel_demo.embedded import EmbeddedStateManager
from helpers.sm_fixtures import running_runtime, sdk_state_manager, wait_for_run

NAMESPACE = "launcher"


class EchoNode(BaseNode):
    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        text: str

    async def execute(self) -> BaseNode.Outputs:
        logging.getLogger("launcher.echo").warning("echoing %s", self.inputs.text)
        return self.Outputs(text=self.inputs.text)


async def main() -> None:
    async with EmbeddedStateManager() as sm, running_runtime(sm, NAMESPACE, [EchoNode]):
        client = sdk_state_manager(sm, NAMESPACE)
        node = GraphNodeModel(
            node_name="EchoNode", namespace=NAMESPACE, identifier="echo", inputs={"text": "hello"}
        )
        await client.upsert_graph("launched", [node], {}, polling_interval=0.05)  # type: ignore[arg-type]
        answer = await client.trigger("launched")
        print(f"RUN_ID={answer['run_id']}", flush=True)
        await wait_for_run(sm, answer["run_id"])
        await asyncio.sleep(0.3)  # the worker ends its spans just after reporting


asyncio.run(main())
