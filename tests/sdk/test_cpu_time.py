"""Each execution's CPU time, exact while executions interleave on one event loop, and its run's sum
(docs/trace-model.md, section "CPU time").

Eight runs of one node execute at once on one runtime (8 workers), each burning a known amount of CPU
(20 to 195 ms) in slices between awaits, some of it in ``asyncio.to_thread``. The node measures what it
burns with the thread's CPU clock; the execute span must say the same within 2 ms, the run's outcome
span (from the embedded server's state manager side) the run's sum, and the histograms the same.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from exospherehost import BaseNode, GraphNodeModel, StoreConfigModel
from opentelemetry import baggage
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel

from exo_otel.core import attributes as attr
from exo_otel.core.ids import trace_id_for_run
from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from exo_otel_demo.embedded import EmbeddedStateManager
from helpers.hostile_nodes import metric_points
from helpers.sm_fixtures import running_runtime, sdk_state_manager, wait_for_run, wait_until

RUNS = 8
SLICES = 4
TOLERANCE_S = 0.002


def burn(ns: int) -> int:
    """Burn ``ns`` of this thread's CPU; return what the thread's CPU clock says was burned."""
    started = time.thread_time_ns()
    while time.thread_time_ns() - started < ns:
        pass
    return time.thread_time_ns() - started


class Burn(BaseNode):
    """Burns ``ms`` of CPU in slices with awaits between; odd runs burn one slice in a thread."""

    burned: ClassVar[dict[str, int]] = {}  # by state id: the ns the node's own clock measured

    class Inputs(BaseModel):
        ms: str
        in_thread: str

    class Outputs(BaseModel):
        ms: str

    async def execute(self) -> BaseNode.Outputs:
        state_id = str(baggage.get_baggage(attr.STATE_ID))
        per_slice = int(self.inputs.ms) * 1_000_000 // SLICES
        burned = 0
        for index in range(SLICES):
            if index == 1 and self.inputs.in_thread == "yes":
                burned += await asyncio.to_thread(burn, per_slice)
            else:
                burned += burn(per_slice)
            await asyncio.sleep(0.003)  # the other executions run here
        Burn.burned[state_id] = burned
        return self.Outputs(ms=self.inputs.ms)


def burn_graph(namespace: str) -> list[GraphNodeModel]:
    return [GraphNodeModel(node_name="Burn", namespace=namespace, identifier="burn",
                           inputs={"ms": "${{ store.ms }}", "in_thread": "${{ store.in_thread }}"})]


@pytest.fixture
def cpu_time_instrumentor(
    tracer_provider: TracerProvider, meter_provider: MeterProvider
) -> Iterator[ExosphereInstrumentor]:
    """The SDK side with CPU time on (it is off by default)."""
    instrumentor = ExosphereInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider, cpu_time=True)
    yield instrumentor
    instrumentor.uninstrument()


@pytest.mark.timeout(120)
async def test_eight_interleaved_executions_each_measured_and_summed_per_run(
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    metric_reader: InMemoryMetricReader,
    meter_provider: MeterProvider,
    cpu_time_instrumentor: ExosphereInstrumentor,
) -> None:
    Burn.burned = {}
    server_reader = InMemoryMetricReader()
    server_meters = MeterProvider(metric_readers=[server_reader])
    namespace = f"cpu-{uuid.uuid4().hex[:8]}"
    try:
        async with EmbeddedStateManager(
            server_side=True, tracer_provider=tracer_provider, meter_provider=server_meters
        ) as sm:
            client = sdk_state_manager(sm, namespace)
            async with running_runtime(sm, namespace, [Burn], workers=RUNS, batch_size=RUNS):
                await client.upsert_graph("burn", burn_graph(namespace), {},  # type: ignore[arg-type]
                                          store_config=StoreConfigModel(required_keys=["ms", "in_thread"]))
                runs = []
                for index in range(RUNS):
                    store = {"ms": str(20 + 25 * index), "in_thread": "yes" if index % 2 else "no"}
                    runs.append((await client.trigger("burn", store=store))["run_id"])
                for run_id in runs:
                    assert await wait_for_run(sm, run_id, timeout=60) == "SUCCESS"
            await wait_until(lambda: len(_named(span_exporter, "settle burn")) == RUNS, timeout=30)
        server_data = server_reader.get_metrics_data()
    finally:
        server_meters.shutdown()
    data = metric_reader.get_metrics_data()

    spans = span_exporter.get_finished_spans()
    # One schema URL for both sides: the runtime's spans and the state manager side's.
    assert {s.instrumentation_scope.schema_url for s in spans if s.instrumentation_scope} == {attr.SCHEMA_URL}
    assert {s.name.split(" ")[0] for s in spans} >= {"run", "settle", "node", "execute", "trigger"}
    executes = _named(span_exporter, "execute Burn")
    node_spans = {span.context.span_id: span for span in spans if span.name == "node burn"}
    assert len(executes) == RUNS
    measured: dict[int, float] = {}  # by trace id: the execute span's CPU time
    for span in executes:
        state_id = node_spans[span.parent.span_id].attributes[attr.STATE_ID]  # type: ignore[union-attr,index]
        burned_s = Burn.burned[str(state_id)] / 1e9
        cpu_s = span.attributes[attr.EXECUTION_CPU_TIME]  # type: ignore[index]
        assert isinstance(cpu_s, float)
        print(f"burned {burned_s * 1000:7.2f} ms, execute span {cpu_s * 1000:7.2f} ms, "
              f"difference {(cpu_s - burned_s) * 1e6:+8.1f} us")
        # What the node burned, and its own few steps' code; never another execution's slices.
        assert abs(cpu_s - burned_s) <= min(TOLERANCE_S, 0.1 * burned_s)
        measured[span.context.trace_id] = cpu_s

    # The run's outcome: its one execution's CPU time and count, from the report's header.
    for span in _named(span_exporter, "settle burn"):
        assert span.attributes[attr.RUN_EXECUTIONS] == 1  # type: ignore[index]
        assert span.attributes[attr.RUN_CPU_TIME] == measured[span.context.trace_id]  # type: ignore[index]

    run_traces = {trace_id_for_run(run_id) for run_id in runs}
    assert set(measured) == run_traces
    node_cpu = _one_point(data, "exosphere.node.cpu_time")
    assert node_cpu.count == RUNS
    assert node_cpu.sum == pytest.approx(sum(measured.values()), rel=1e-9)
    assert node_cpu.attributes[attr.STATE_OUTCOME] == attr.OUTCOME_EXECUTED
    assert {e.trace_id for e in node_cpu.exemplars} <= run_traces and node_cpu.exemplars
    run_cpu = _one_point(server_data, "exosphere.run.cpu_time")
    assert run_cpu.count == RUNS
    assert run_cpu.sum == pytest.approx(sum(measured.values()), rel=1e-9)
    assert run_cpu.attributes["exosphere.run.status"] == "SUCCESS"
    assert {e.trace_id for e in run_cpu.exemplars} <= run_traces and run_cpu.exemplars


def _named(exporter: InMemorySpanExporter, name: str) -> list[Any]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def _one_point(data: Any, name: str) -> Any:
    points = metric_points(data, name)
    assert len(points) == 1, points
    return points[0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["default", "environment", "argument"])
async def test_off_nothing_is_measured_nor_reported(
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    metric_reader: InMemoryMetricReader,
    meter_provider: MeterProvider,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    Burn.burned = {}
    instrumentor = ExosphereInstrumentor()
    if how == "default":
        monkeypatch.delenv("OTEL_PYTHON_EXOSPHERE_CPU_TIME", raising=False)
        instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    elif how == "environment":
        monkeypatch.setenv("OTEL_PYTHON_EXOSPHERE_CPU_TIME", "false")
        instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    else:
        instrumentor.instrument(
            tracer_provider=tracer_provider, meter_provider=meter_provider, cpu_time=False
        )
    namespace = f"cpu-off-{uuid.uuid4().hex[:8]}"
    try:
        async with EmbeddedStateManager(server_side=True, tracer_provider=tracer_provider) as sm:
            client = sdk_state_manager(sm, namespace)
            async with running_runtime(sm, namespace, [Burn], workers=2):
                await client.upsert_graph("burn", burn_graph(namespace), {},  # type: ignore[arg-type]
                                          store_config=StoreConfigModel(required_keys=["ms", "in_thread"]))
                run_ids = [(await client.trigger("burn", store={"ms": "5", "in_thread": flag}))["run_id"]
                           for flag in ("no", "yes")]
                for run_id in run_ids:
                    assert await wait_for_run(sm, run_id, timeout=30) == "SUCCESS"
            await wait_until(lambda: len(_named(span_exporter, "settle burn")) == len(run_ids), timeout=30)
    finally:
        instrumentor.uninstrument()
    executes = _named(span_exporter, "execute Burn")
    assert len(executes) == len(Burn.burned) == 2
    assert all(attr.EXECUTION_CPU_TIME not in (s.attributes or {}) for s in executes)
    assert all(attr.RUN_CPU_TIME not in (s.attributes or {}) for s in _named(span_exporter, "settle burn"))
    assert metric_points(metric_reader.get_metrics_data(), "exosphere.node.cpu_time") == []
