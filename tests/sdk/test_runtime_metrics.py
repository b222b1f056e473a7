"""The runtime's metrics at load: failed durations name their error, the in-flight gauge is observed
and comes back to 0, and exemplars go on the histograms only (docs/trace-model.md, section "Metrics")."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from exospherehost import BaseNode
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from exo_otel_demo.embedded import EmbeddedStateManager
from helpers.hostile_nodes import NAMESPACE, RaiseNode, metric_points, upsert_one_node_graph
from helpers.otel_fixtures import instrumented
from helpers.sm_fixtures import running_runtime, sdk_state_manager, wait_until

RUNS = 20
# 20 runs triggered at once are found through the run APIs one run graph per call, at 50 calls/s: the
# last ones can take longer than the default 250 ms wait, and a state placed in no run has no graph name
# to put on its metrics. This test is about the metrics, not about placement: every state waits for it.
PATIENT_PLACEMENT_WAIT_MS = 30_000


@pytest.fixture
def patient_instrumentor(
    tracer_provider: TracerProvider, meter_provider: MeterProvider
) -> Iterator[ExosphereInstrumentor]:
    with instrumented(
        tracer_provider=tracer_provider, meter_provider=meter_provider,
        placement_wait_ms=PATIENT_PLACEMENT_WAIT_MS,
    ) as instrumentor:
        yield instrumentor


class HalfFail(RaiseNode):
    """Fails (ValueError) for odd texts, every attempt; returns the text otherwise."""

    async def execute(self) -> BaseNode.Outputs:
        HalfFail.calls += 1
        if int(self.inputs.text) % 2:
            raise ValueError("odd")
        return self.Outputs(text=self.inputs.text)


async def test_metrics_of_twenty_runs_half_failing(
    patient_instrumentor: ExosphereInstrumentor,
    metric_reader: InMemoryMetricReader,
    span_exporter: InMemorySpanExporter,
    state_manager: EmbeddedStateManager,
) -> None:
    HalfFail.calls = 0
    client = sdk_state_manager(state_manager, NAMESPACE)
    async with running_runtime(state_manager, NAMESPACE, [HalfFail], workers=8):
        await upsert_one_node_graph(client, "half", HalfFail)
        for number in range(RUNS):
            await client.trigger("half", store={"text": str(number)})
        # Even texts once; odd ones twice (one retry): 10 + 20 attempts, each ended (its metrics recorded)
        # before its execute span is exported. Collected once: exemplars are kept per collection.
        await wait_until(lambda: len([s for s in span_exporter.get_finished_spans()
                                      if s.name == "execute HalfFail"]) >= RUNS // 2 * 3, timeout=30)

    data = metric_reader.get_metrics_data()  # once: a collection takes the exemplars it reports
    durations = metric_points(data, "exosphere.node.duration")
    by_outcome = {p.attributes["exosphere.state.outcome"]: p for p in durations}
    assert not metric_points(data, "exosphere.runtime.unplaced")  # every state in its run: graph named
    assert by_outcome["executed"].count == RUNS // 2
    assert "error.type" not in by_outcome["executed"].attributes
    assert by_outcome["errored"].count == RUNS
    assert by_outcome["errored"].attributes["error.type"] == "ValueError"
    # Recorded with the (sampled) execute span current: each histogram point keeps exemplars.
    assert all(p.exemplars for p in durations)
    assert all(p.exemplars for p in metric_points(data, "exosphere.node.queue_wait"))
    executions = metric_points(data, "exosphere.node.executions")
    assert sum(p.value for p in executions) == RUNS // 2 * 3
    assert all(not p.exemplars for p in executions)
    inflight = metric_points(data, "exosphere.runtime.inflight")
    # Observed at collection: the node's series is there (with any other this process has had a state
    # in flight for), and nothing is in flight any more.
    ours = {"exosphere.namespace": NAMESPACE, "exosphere.graph.name": "half",
            "exosphere.node.name": "HalfFail"}
    assert ours in [dict(p.attributes) for p in inflight]
    assert all(p.value == 0 for p in inflight)
