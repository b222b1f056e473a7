"""A runtime started the README's way (``Runtime(...).start()`` blocks the main thread), for the signal tests.

A helper thread runs the graphs: ``COMPLETED`` one-node runs that finish, then two whose node hangs.
When they are in that state it prints ``READY {"completed": [...], "in_flight": [...]}``; the test
then signals the process. The state manager is an embedded one serving from a thread of this
process, or the one given as ``--uri URI --key KEY`` (the real upstream server in the upstream tests).
``--by-hand`` sets OpenTelemetry up in code (batch processors, OTLP/HTTP exporters from the
``OTEL_*`` environment, ``ExosphereInstrumentor().instrument()``) instead of the launcher.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time

from exospherehost import Runtime, StateManager

from exo_otel_demo.embedded import EmbeddedStateManager
from helpers.hostile_nodes import NAMESPACE, HangNode, RaiseNode, upsert_one_node_graph
from helpers.sm_fixtures import POLL_INTERVAL

COMPLETED = 3


async def _upsert_when_registered(client: StateManager) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            await upsert_one_node_graph(client, "quick", RaiseNode)
            await upsert_one_node_graph(client, "hang", HangNode)
            return
        except Exception:  # the runtime has not registered its nodes yet
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def drive(uri: str, key: str) -> None:
    async def go() -> None:
        client = StateManager(namespace=NAMESPACE, state_manager_uri=uri, key=key)
        await _upsert_when_registered(client)
        completed = [
            (await client.trigger("quick", store={"text": str(i)}))["run_id"] for i in range(COMPLETED)
        ]
        while RaiseNode.calls < COMPLETED:
            await asyncio.sleep(0.02)
        in_flight = [(await client.trigger("hang", store={"text": str(i)}))["run_id"] for i in range(2)]
        while HangNode.started < 2:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)  # the workers report the completed states, then end their spans
        print("READY " + json.dumps({"completed": completed, "in_flight": in_flight}), flush=True)

    asyncio.run(go())


def set_up_by_hand() -> None:
    """What a user without the launcher writes: providers with batch processors, then instrument()."""
    from opentelemetry import metrics, trace
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from exo_otel import ExosphereInstrumentor

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())]))
    ExosphereInstrumentor().instrument()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--uri")
    parser.add_argument("--key")
    parser.add_argument("--by-hand", action="store_true")
    args = parser.parse_args()
    if args.by_hand:
        set_up_by_hand()
    uri, key = args.uri, args.key
    if uri is None:
        sm = EmbeddedStateManager()
        sm.start_in_thread()
        uri, key = sm.uri, sm.api_key
    threading.Thread(target=drive, args=(uri, key), daemon=True).start()
    runtime = Runtime(
        namespace=NAMESPACE, name="signalled", nodes=[RaiseNode, HangNode], state_manager_uri=uri,
        key=key, workers=4, poll_interval=POLL_INTERVAL,  # type: ignore[arg-type]
    )
    started = time.monotonic()
    runtime.start()
    print(f"runtime returned after {time.monotonic() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main()
