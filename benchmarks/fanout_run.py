"""One fan-out run per size on the embedded state manager with the state manager side: what it costs.

For each size (items of the fan-out; the run has 2 x items states: the split, its copies, the work
states), one run with a real exospherehost Runtime (8 workers) and the real OpenTelemetry SDK.
Prints states, spans, OTLP bytes per state (all spans of the run, resource excluded, as the OTLP
exporter encodes them), the time from the trigger to the run's `settle` span's end, and the state
manager side's sweep time per state (its passes are synchronous over the in-memory store, so their
wall time is their CPU), with each size's ratio to the smallest. No assertions: the numbers are the
result (issue 20 asks for the sweep's cost per state to stay flat within 1.5x from 100 to 5,000).

Run: ``.venv/bin/python benchmarks/fanout_run.py [--items 100 1000 5000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from test_span_size import GRAPH, SizeSplit, SizeWork, graph_nodes, scope_bytes

from exo_otel.core.ids import trace_id_for_run
from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from exo_otel_demo.embedded import EmbeddedStateManager
from helpers.sm_fixtures import running_runtime, sdk_state_manager, wait_for_run


async def one_run(items: int) -> dict[str, float]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = ExosphereInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        async with EmbeddedStateManager(server_side=True, tracer_provider=provider) as sm:
            sweeper = sm._api.side.side.sweeper  # type: ignore[union-attr]
            namespace = f"fanout-{uuid.uuid4().hex[:8]}"
            async with running_runtime(sm, namespace, [SizeSplit, SizeWork], workers=8, batch_size=64):
                client = sdk_state_manager(sm, namespace)
                await client.upsert_graph(GRAPH, graph_nodes(namespace), {})
                started = time.time_ns()
                answer = await client.trigger(GRAPH, inputs={"count": str(items)})
                run_id = str(answer["run_id"])
                await wait_for_run(sm, run_id, timeout=600)
                trace_id = trace_id_for_run(run_id)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    spans = [
                        s for s in exporter.get_finished_spans()
                        if s.context is not None and s.context.trace_id == trace_id
                    ]
                    settle = [s for s in spans if s.name == f"settle {GRAPH}"]
                    if settle:
                        break
                    await asyncio.sleep(0.1)
        states = 2 * items
        return {
            "states": states,
            "spans": len(spans),
            "bytes_per_state": scope_bytes(spans) / states,
            "settle_s": ((settle[0].end_time or 0) - started) / 1e9 if settle else float("nan"),
            "sweep_us_per_state": sweeper.stats.seconds / states * 1e6,
            "passes": sweeper.stats.passes,
        }
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[100, 1000, 5000])
    args = parser.parse_args()
    first: dict[str, float] | None = None
    for items in args.items:
        result = await one_run(items)
        first = first or result
        ratio = result["sweep_us_per_state"] / first["sweep_us_per_state"]
        print(
            f"items={items} states={result['states']:.0f} spans={result['spans']:.0f} "
            f"bytes/state={result['bytes_per_state']:.0f} trigger-to-settle={result['settle_s']:.1f} s "
            f"sweep={result['sweep_us_per_state']:.1f} us/state over {result['passes']:.0f} passes "
            f"(x{ratio:.2f} of the smallest)",
            flush=True,
        )


if __name__ == "__main__":
    asyncio.run(main())
