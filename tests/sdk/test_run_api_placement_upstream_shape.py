"""Upstream-shaped enqueue answers: runs found through the run APIs, bounded; broken run APIs harmless."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence

import pytest
from exospherehost import BaseNode, GraphNodeModel, Runtime
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel

from exo_otel.core.ids import state_span_id, trace_id_for_state
from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from exo_otel_demo.embedded import EmbeddedStateManager
from helpers import conformance_graph as cg
from helpers.http_proxy import CountingProxy, RunApiMode, counting_proxy
from helpers.otel_fixtures import instrumented
from helpers.runtime_tracing import EXPECTED_RUN_TREE, SPANS_PER_RUN, label, run_spans
from helpers.sm_fixtures import POLL_INTERVAL, sdk_state_manager, wait_for_run, wait_until
from helpers.span_tree import dump_tree

CHAIN_NAMESPACE = "run-api-chain"


class First(BaseNode):
    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        text: str

    async def execute(self) -> BaseNode.Outputs:
        return self.Outputs(text=self.inputs.text + "!")


class Second(First):
    pass


@contextlib.asynccontextmanager
async def runtime_through(
    proxy: CountingProxy, sm: EmbeddedStateManager, namespace: str, nodes: Sequence[type[BaseNode]]
) -> AsyncIterator[Runtime]:
    runtime = Runtime(
        namespace=namespace,
        name="test-runtime",
        nodes=list(nodes),
        state_manager_uri=proxy.uri,
        key=sm.api_key,
        poll_interval=POLL_INTERVAL,
    )  # type: ignore[arg-type]
    task = runtime.start()
    assert task is not None
    try:
        await wait_until(lambda: {n.__name__ for n in nodes} <= sm.registered_nodes(namespace))
        yield runtime
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def instrumented_run_api(tracer_provider: TracerProvider) -> ExosphereInstrumentor:
    with instrumented(tracer_provider=tracer_provider, placement="run_api") as instrumentor:
        yield instrumentor  # type: ignore[misc]


async def test_run_api_association_is_bounded_per_poll(
    state_manager: EmbeddedStateManager,
    span_exporter: InMemorySpanExporter,
    instrumented_run_api: ExosphereInstrumentor,
) -> None:
    async with (
        counting_proxy(state_manager.uri) as proxy,
        runtime_through(proxy, state_manager, cg.NAMESPACE, cg.NODES) as runtime,
    ):
        lookup = runtime._exo_otel_tracing.run_api_placement()
        client = sdk_state_manager(state_manager, cg.NAMESPACE)
        await cg.upsert(client)  # type: ignore[arg-type]
        run_id = (await client.trigger(cg.GRAPH, store={"topic": f"bound-{uuid.uuid4()}"}))["run_id"]
        assert await wait_for_run(state_manager, run_id) == "SUCCESS"
        await wait_until(lambda: len(run_spans(span_exporter.get_finished_spans(), run_id)) >= SPANS_PER_RUN)
    # The runtime stopped: its lookup's task ended and its one HTTP session was closed.
    assert lookup.calls > 0 and not lookup.running
    assert lookup.api.sessions_opened == 1
    spans = run_spans(span_exporter.get_finished_spans(), run_id)
    assert dump_tree(spans, label) == EXPECTED_RUN_TREE
    polls_with_states = proxy.calls["enqueue_with_states"]
    states = len(state_manager.states(run_id))
    print(f"run API calls {proxy.calls['run_api']}, {states} states, {polls_with_states} polls with states")
    # At most a runs page and a graph per state (one graph places every state of the run it holds).
    assert 0 < proxy.calls["run_api"] <= 2 * states
    # Polls that bring nothing new cost nothing extra.
    assert proxy.calls["enqueue"] > polls_with_states


@pytest.mark.parametrize("mode", ["error", "timeout"])
async def test_broken_run_apis_leave_execution_alone_and_give_traces_of_their_own(
    state_manager: EmbeddedStateManager,
    span_exporter: InMemorySpanExporter,
    instrumented_run_api: ExosphereInstrumentor,
    mode: RunApiMode,
) -> None:
    nodes = [
        GraphNodeModel(
            node_name="First",
            namespace=CHAIN_NAMESPACE,
            identifier="first",
            inputs={"text": "hi"},
            next_nodes=["second"],
        ),
        GraphNodeModel(
            node_name="Second",
            namespace=CHAIN_NAMESPACE,
            identifier="second",
            inputs={"text": "${{ first.outputs.text }}"},
        ),
    ]
    async with (
        counting_proxy(state_manager.uri, run_api=mode) as proxy,
        runtime_through(proxy, state_manager, CHAIN_NAMESPACE, [First, Second]),
    ):
        client = sdk_state_manager(state_manager, CHAIN_NAMESPACE)
        await client.upsert_graph("chain", nodes, {}, polling_interval=0.05)  # type: ignore[arg-type]
        run_id = (await client.trigger("chain"))["run_id"]
        assert await wait_for_run(state_manager, run_id, timeout=30) == "SUCCESS"
        await wait_until(
            lambda: sum(s.name.startswith("node ") for s in span_exporter.get_finished_spans()) >= 2
        )
    assert proxy.calls["run_api"] >= 1
    states = state_manager.states(run_id)
    assert [s.outputs for s in sorted(states, key=lambda s: s.identifier)] == [
        {"text": "hi!"},
        {"text": "hi!!"},
    ]
    spans = span_exporter.get_finished_spans()
    node_spans = [s for s in spans if s.name.startswith("node ")]
    assert sorted(s.name for s in node_spans) == ["node first", "node second"]
    for span in node_spans:
        state_id = (span.attributes or {})["exosphere.state.id"]
        assert state_id in {s.id for s in states}
        # A trace of its own, its id derived from the state id; its execute span is in it too.
        assert span.parent is None and not span.links
        assert span.context is not None and span.context.trace_id == trace_id_for_state(str(state_id))
        assert span.context.span_id == state_span_id(str(state_id))
        assert "exosphere.run.id" not in (span.attributes or {})
        # The root of a trace no run names: the only span of it that can say the namespace.
        assert (span.attributes or {})["exosphere.namespace"] == CHAIN_NAMESPACE
        (execute,) = [s for s in spans if s.parent is not None and s.parent.span_id == span.context.span_id]
        assert execute.context is not None and execute.context.trace_id == span.context.trace_id
        assert "exosphere.namespace" not in (execute.attributes or {})
    assert [s.name for s in run_spans(spans, run_id)] == ["trigger chain"]
