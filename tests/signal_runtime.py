"""A runtime started the README's way (``Runtime(...).start()`` blocks the main thread), for the signal tests.

A helper thread runs the graphs: ``COMPLETED`` one-node runs that finish, then two whose node hangs.
When they are in that state it prints ``READY {"completed": [...], "in_flight": [...]}``; the test
then signals the process. The embedded state manager serves from a thread of the same process.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

from exospherehost import Runtime

from exo_otel.embedded import EmbeddedStateManager
from hostile_nodes import NAMESPACE, HangNode, RaiseNode, upsert_one_node_graph
from sm_fixtures import POLL_INTERVAL, sdk_state_manager

COMPLETED = 3


def drive(sm: EmbeddedStateManager) -> None:
    async def go() -> None:
        while {"RaiseNode", "HangNode"} - sm.registered_nodes(NAMESPACE):
            await asyncio.sleep(0.02)
        client = sdk_state_manager(sm, NAMESPACE)
        await upsert_one_node_graph(client, "quick", RaiseNode)
        await upsert_one_node_graph(client, "hang", HangNode)
        completed = [
            (await client.trigger("quick", store={"text": str(i)}))["run_id"] for i in range(COMPLETED)
        ]
        while any(sm.run_status(run_id) == "PENDING" for run_id in completed):
            await asyncio.sleep(0.02)
        in_flight = [(await client.trigger("hang", store={"text": str(i)}))["run_id"] for i in range(2)]
        while HangNode.started < 2:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # the workers end a state's spans just after reporting it
        print("READY " + json.dumps({"completed": completed, "in_flight": in_flight}), flush=True)

    asyncio.run(go())


def main() -> None:
    sm = EmbeddedStateManager()
    sm.start_in_thread()
    threading.Thread(target=drive, args=(sm,), daemon=True).start()
    runtime = Runtime(
        namespace=NAMESPACE, name="signalled", nodes=[RaiseNode, HangNode], state_manager_uri=sm.uri,
        key=sm.api_key, workers=4, poll_interval=POLL_INTERVAL,  # type: ignore[arg-type]
    )
    started = time.monotonic()
    runtime.start()
    print(f"runtime returned after {time.monotonic() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main()
