"""Fan-out runs on the real upstream state manager, without and with the state manager side: what they cost.

For each size (items of the fan-out; the run has 2 x items states: the split, its copies, the work
states), one run on the unmodified server without the side, then one on a server with the side loaded
by the launcher's auto-initialisation (both on the harness's in-process database, exporting over OTLP
to a receiver here), each with a real exospherehost Runtime of 8 workers instrumented by exo_otel.
Prints states, spans, OTLP bytes per state (every span of the run, resource excluded, as the exporters
encoded them), the time from the trigger to the run's end, and the server process's CPU per state
without and with the side; their difference is the side's CPU per state, with each size's ratio to
the smallest (issue 20 asks for it to stay flat within 1.5x). Server CPU is read from /proc (10 ms
ticks), so small runs are coarse. No assertions: the numbers are the result.

Run: ``.venv/bin/python benchmarks/fanout_upstream.py [--items 100 1000 5000]`` with the upstream
source available (UPSTREAM_GIT_DIR, UPSTREAM_SRC or ../shared/upstream-src).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from dataclasses import dataclass

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from exospherehost import GraphNodeModel, StoreConfigModel
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from test_span_size import GRAPH, SizeSplit, SizeWork, scope_bytes

from exo_otel.core.ids import format_trace_id, trace_id_for_run
from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from helpers.otlp_receiver import OtlpHttpReceiver
from helpers.process_cpu import tree_cpu_seconds
from helpers.servers import UpstreamServerUnderTest
from helpers.upstream_side import side_server
from helpers.upstream_sm import UpstreamServer, require_upstream, upstream_state_manager


def graph_nodes(namespace: str) -> list[GraphNodeModel]:
    # Upstream 0.0.3 takes a root's inputs from the graph and the store only: the count comes in the store.
    return [
        GraphNodeModel(node_name="SizeSplit", namespace=namespace, identifier="split",
                       inputs={"count": "${{ store.count }}"}, next_nodes=["work"]),
        GraphNodeModel(node_name="SizeWork", namespace=namespace, identifier="work",
                       inputs={"item": "${{ split.outputs.item }}"}),
    ]


async def settled_states(target: UpstreamServerUnderTest, namespace: str, run_id: str, states: int) -> int:
    """Wait until the run has ``states`` states and none pending (upstream's runs route); that count."""
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        status, body = await target.request("GET", f"/v0/namespace/{namespace}/runs/1/10")
        assert status == 200, body
        run = next((r for r in body["runs"] if r["run_id"] == run_id), None)
        if run is not None and run["pending_count"] == 0 and run["total_count"] >= states:
            return int(run["total_count"])
        await asyncio.sleep(0.2)
    raise AssertionError(f"run {run_id} did not settle in 30 minutes")


@dataclass
class RunCost:
    states: int
    spans: int
    bytes_per_state: float
    seconds: float
    server_cpu_per_state_ms: float


async def one_run(
    server: UpstreamServer, rx: OtlpHttpReceiver, exporter: InMemorySpanExporter, items: int, with_side: bool
) -> RunCost:
    target = UpstreamServerUnderTest(server)
    namespace = f"fanout-{uuid.uuid4().hex[:8]}"
    async with target.runtime(namespace, [SizeSplit, SizeWork], workers=8, batch_size=64):
        client = target.client(namespace)
        await client.upsert_graph(
            GRAPH, graph_nodes(namespace), {}, store_config=StoreConfigModel(required_keys=["count"])
        )  # type: ignore[arg-type]
        cpu_before = tree_cpu_seconds(server.pid)
        started = time.monotonic()
        run_id = str((await client.trigger(GRAPH, store={"count": str(items)}))["run_id"])
        states = await settled_states(target, namespace, run_id, 2 * items)
        seconds = time.monotonic() - started
        trace_id = format_trace_id(run_id)
        deadline = time.monotonic() + 120
        while with_side and time.monotonic() < deadline:
            if any(s.name == f"settle {GRAPH}" and s.trace_id == trace_id for s in rx.spans()):
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # the last export batches
        cpu = tree_cpu_seconds(server.pid) - cpu_before
    server_spans = [s for s in rx.spans() if s.trace_id == trace_id]
    runtime_spans = [
        s for s in exporter.get_finished_spans()
        if s.context is not None and s.context.trace_id == trace_id_for_run(run_id)
    ]
    total_bytes = sum(s.wire_bytes for s in server_spans) + scope_bytes(runtime_spans)
    return RunCost(states, len(server_spans) + len(runtime_spans), total_bytes / states, seconds,
                   cpu / states * 1e3)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[100, 1000, 5000])
    args = parser.parse_args()
    require_upstream()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = ExosphereInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    first_side: float | None = None
    try:
        with OtlpHttpReceiver() as rx, upstream_state_manager(history=False) as plain, \
                side_server(rx, history=False) as with_side:
            for items in args.items:
                without = await one_run(plain, rx, exporter, items, with_side=False)
                exporter.clear()
                side = await one_run(with_side, rx, exporter, items, with_side=True)
                exporter.clear()
                added = side.server_cpu_per_state_ms - without.server_cpu_per_state_ms
                first_side = first_side or added
                print(
                    f"items={items} states={side.states} spans={side.spans} "
                    f"bytes/state={side.bytes_per_state:.0f} "
                    f"run={without.seconds:.1f} s without the side, {side.seconds:.1f} s with it; "
                    f"server CPU/state {without.server_cpu_per_state_ms:.2f} ms without, "
                    f"{side.server_cpu_per_state_ms:.2f} ms with: the side {added:.2f} ms/state "
                    f"(x{added / first_side:.2f} of the smallest)",
                    flush=True,
                )
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
