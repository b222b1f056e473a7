"""OTLP bytes per state of a big fan-out run: a 10,000-state run must fit Tempo's default trace size.

Tempo refuses a trace over ``max_bytes_per_trace`` (5 MB by default): at 500 bytes per state a run of
10,000 states fits. The run here is real (the exospherehost Runtime on the embedded state manager,
without and with the state manager side); its spans are encoded as the OTLP exporter encodes them
(`encode_spans`), and the bytes counted are those of the scope spans: the resource, sent once per
export whatever the run's size, is left out.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Sequence

import pytest
from exospherehost import BaseNode, GraphNodeModel
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel

from exo_otel.core.ids import state_span_id, trace_id_for_run
from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from exo_otel_demo.embedded import EmbeddedStateManager
from helpers.sm_fixtures import running_runtime, sdk_state_manager, wait_for_run

GRAPH = "fan-out-size"
MAX_BYTES_PER_STATE = 500


class SizeSplit(BaseNode):
    class Inputs(BaseModel):
        count: str

    class Outputs(BaseModel):
        item: str

    async def execute(self) -> list[BaseNode.Outputs]:
        return [self.Outputs(item=str(index)) for index in range(int(self.inputs.count))]


class SizeWork(BaseNode):
    class Inputs(BaseModel):
        item: str

    class Outputs(BaseModel):
        done: str

    async def execute(self) -> BaseNode.Outputs:
        return self.Outputs(done=self.inputs.item)


def graph_nodes(namespace: str) -> list[GraphNodeModel]:
    return [
        GraphNodeModel(node_name="SizeSplit", namespace=namespace, identifier="split",
                       inputs={"count": "1"}, next_nodes=["work"]),
        GraphNodeModel(node_name="SizeWork", namespace=namespace, identifier="work",
                       inputs={"item": "${{ split.outputs.item }}"}),
    ]


def scope_bytes(spans: Sequence[ReadableSpan]) -> int:
    """OTLP bytes of ``spans`` as the exporter encodes them, the resource left out."""
    request = encode_spans(spans)
    return sum(scope.ByteSize() for resource in request.resource_spans for scope in resource.scope_spans)


async def _fan_out_run(
    sm: EmbeddedStateManager, exporter: InMemorySpanExporter, items: int, with_side: bool
) -> list[ReadableSpan]:
    """One run of ``2 * items`` states (split, its ``items - 1`` fan-out copies, ``items`` work states);
    every span of its trace, once every state's node span (and with the side, the root) is out."""
    namespace = f"size-{uuid.uuid4().hex[:8]}"
    async with running_runtime(sm, namespace, [SizeSplit, SizeWork], workers=8, batch_size=64):
        client = sdk_state_manager(sm, namespace)
        await client.upsert_graph(GRAPH, graph_nodes(namespace), {})
        answer = await client.trigger(GRAPH, inputs={"count": str(items)})
        run_id = str(answer["run_id"])
        assert await wait_for_run(sm, run_id, timeout=60) == "SUCCESS"
        state_ids = {state.id for state in sm.states(run_id)}
        assert len(state_ids) == 2 * items
        trace_id = trace_id_for_run(run_id)
        wanted = {state_span_id(state_id) for state_id in state_ids}
        deadline = time.monotonic() + 30
        while True:
            spans = [
                s for s in exporter.get_finished_spans()
                if s.context is not None and s.context.trace_id == trace_id
            ]
            node_ids = {s.context.span_id for s in spans if s.context is not None and s.name[:5] == "node "}
            names = {s.name for s in spans}
            # With the side, the root (at the trigger) and the outcome (at settle) too.
            side_out = not with_side or {f"run {GRAPH}", f"settle {GRAPH}"} <= names
            if (wanted <= node_ids and side_out) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    assert wanted <= node_ids, f"{len(wanted - node_ids)} states have no node span"
    return spans


def _report(label: str, items: int, spans: Sequence[ReadableSpan]) -> float:
    """Print the run's size; its bytes per state. An executed state (node and execute span) costs more
    than the average, a fan-out copy (a node span alone) less: both are printed."""
    states = 2 * items
    total = scope_bytes(spans)
    by_kind = Counter(s.name.split(" ")[0] for s in spans)
    per_state = total / states
    executed_nodes = {
        s.context.span_id: s for s in spans
        if s.context is not None and s.name == "node work"
    }
    pairs = [
        (node, execute) for execute in spans
        if execute.name == "execute SizeWork" and execute.parent is not None
        and (node := executed_nodes.get(execute.parent.span_id)) is not None
    ]
    assert len(pairs) == items
    pair_bytes = scope_bytes([span for pair in pairs for span in pair]) / len(pairs)
    copies = [s for s in spans if "exosphere.state.fanout_of" in (s.attributes or {})]
    assert len(copies) == items - 1
    copy_bytes = scope_bytes(copies) / len(copies)
    print(
        f"\n[span size] {label} items={items} states={states} spans={len(spans)} {dict(by_kind)} "
        f"bytes={total} per_state={per_state:.0f} executed_state(node+execute)={pair_bytes:.0f} "
        f"copy={copy_bytes:.0f}"
    )
    # A run of executed states only (a chain, no fan-out) costs this per state: it must fit too (with
    # the default settings: CPU time off; docs/trace-model.md, section "Size").
    assert pair_bytes <= MAX_BYTES_PER_STATE
    return per_state


@pytest.mark.timeout(120)
@pytest.mark.parametrize("items", [100, 1000])
async def test_a_fan_out_run_costs_at_most_500_bytes_per_state_without_the_side(
    state_manager_with_context: EmbeddedStateManager,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    instrumentor: ExosphereInstrumentor,
    items: int,
) -> None:
    spans = await _fan_out_run(state_manager_with_context, span_exporter, items, with_side=False)
    assert _report("runtime node spans", items, spans) <= MAX_BYTES_PER_STATE


@pytest.mark.timeout(120)
@pytest.mark.parametrize("items", [100, 1000])
async def test_a_fan_out_run_costs_at_most_500_bytes_per_state_with_the_side(
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    instrumentor: ExosphereInstrumentor,
    items: int,
) -> None:
    async with EmbeddedStateManager(server_side=True, tracer_provider=tracer_provider) as sm:
        spans = await _fan_out_run(sm, span_exporter, items, with_side=True)
    assert _report("server node spans", items, spans) <= MAX_BYTES_PER_STATE
