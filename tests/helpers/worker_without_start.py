"""Run by tests/sdk/test_lookup_resources.py in a process of its own: an instrumented runtime used without
``Runtime.start()`` (its worker run directly, as upstream's own tests do), its poll made once, and
``asyncio.run`` left to end everything as the program returns. Prints what the run lookup did."""

from __future__ import annotations

import asyncio

from exospherehost import BaseNode, GraphNodeModel, Runtime, StateManager
from opentelemetry.sdk.trace import TracerProvider
from pydantic import BaseModel

from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from exo_otel_demo.embedded import EmbeddedStateManager

NAMESPACE = "no-start"


class Echo(BaseNode):
    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        text: str

    async def execute(self) -> BaseNode.Outputs:
        return self.Outputs(text=self.inputs.text)


async def main() -> None:
    ExosphereInstrumentor().instrument(tracer_provider=TracerProvider())
    sm = EmbeddedStateManager()
    await sm.start()
    runtime = Runtime(namespace=NAMESPACE, name="no-start", nodes=[Echo], state_manager_uri=sm.uri,
                      key=sm.api_key, workers=1)  # type: ignore[arg-type]
    await runtime._register()
    client = StateManager(namespace=NAMESPACE, state_manager_uri=sm.uri, key=sm.api_key)
    node = GraphNodeModel(node_name="Echo", namespace=NAMESPACE, identifier="echo", inputs={"text": "x"})
    await client.upsert_graph("g", [node], {})  # type: ignore[arg-type]
    run_id = (await client.trigger("g"))["run_id"]
    for state in (await runtime._enqueue_call())["states"]:  # the runtime's poll: the lookup starts
        await runtime._state_queue.put(state)
    worker = asyncio.create_task(runtime._worker(0))
    while sm.run_status(run_id) == "PENDING":
        await asyncio.sleep(0.01)
    lookup = runtime._exo_otel_tracing.run_api_placement()
    print(f"RUN={sm.run_status(run_id)} CALLS={lookup.calls} RUNNING={lookup.running}", flush=True)
    del worker  # left running, as a program that just returns leaves it


asyncio.run(main())
