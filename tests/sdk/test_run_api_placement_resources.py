"""What exo_otel's run lookup opens (a background task, an HTTP session) is closed on every path,
whether or not the runtime was started with ``Runtime.start()``: when it has been idle a while, and
when the event loop shuts down under it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from exospherehost import BaseNode, GraphNodeModel, Runtime
from pydantic import BaseModel

from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from exo_otel.sdk.run_api_placement import RunApiPlacement
from exo_otel_demo.embedded import EmbeddedStateManager
from helpers import HELPERS_DIR, TESTS_DIR
from helpers.sm_fixtures import sdk_state_manager, wait_until

NAMESPACE = "resources"
LEAK_MARKERS = ("Unclosed client session", "Unclosed connector", "Task was destroyed but it is pending")


class Echo(BaseNode):
    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        text: str

    async def execute(self) -> BaseNode.Outputs:
        return self.Outputs(text=self.inputs.text)


async def test_lookup_ends_its_task_and_session_when_idle_without_start(
    state_manager: EmbeddedStateManager, instrumentor: ExosphereInstrumentor
) -> None:
    sm = state_manager
    runtime = Runtime(namespace=NAMESPACE, name="idle", nodes=[Echo], state_manager_uri=sm.uri,
                      key=sm.api_key, workers=1)  # type: ignore[arg-type]
    await runtime._register()
    client = sdk_state_manager(sm, NAMESPACE)
    node = GraphNodeModel(node_name="Echo", namespace=NAMESPACE, identifier="echo", inputs={"text": "x"})
    await client.upsert_graph("g", [node], {})  # type: ignore[arg-type]
    run_id = (await client.trigger("g"))["run_id"]
    for state in (await runtime._enqueue_call())["states"]:
        await runtime._state_queue.put(state)
    worker = asyncio.create_task(runtime._worker(0))
    try:
        await wait_until(lambda: sm.run_status(run_id) == "SUCCESS")
        lookup: RunApiPlacement = runtime._exo_otel_tracing.run_api_placement()  # type: ignore[attr-defined]
        assert lookup.calls > 0 and lookup.running
        # Nothing more to ask: within IDLE_CLOSE_S the task ends and the session is closed.
        await wait_until(lambda: not lookup.running, timeout=RunApiPlacement.IDLE_CLOSE_S + 3)
        assert not lookup.api.session_open
    finally:
        worker.cancel()


def test_nothing_left_open_when_the_loop_ends_without_start() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    result = subprocess.run([sys.executable, str(HELPERS_DIR / "worker_without_start.py")], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    # The lookup was at work when the program returned: asyncio.run's shutdown ended it.
    assert "RUN=SUCCESS" in result.stdout and "RUNNING=True" in result.stdout, result.stdout
    for marker in LEAK_MARKERS:
        assert marker not in result.stderr, result.stderr[-3000:]
