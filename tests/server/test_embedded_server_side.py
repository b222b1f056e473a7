"""The state manager side through the embedded state manager (CI has no upstream source): same checks.

``EmbeddedStateManager(server_side=True)`` runs the same core as the upstream adapter: the run's
carrier in enqueue and trigger answers, ``run`` and ``node`` spans emitted by the server, runtimes
emitting only ``execute`` spans.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from opentelemetry import baggage, context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased

from exo_otel.core.ids import format_trace_id
from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from exo_otel_demo.embedded import EmbeddedStateManager
from helpers import upstream_graph as ug
from helpers.server_preloads import KeepOneGraph
from helpers.trace_checks import check_runs, flatten
from helpers.upstream_side import (
    EXECUTES_PER_RUN,
    graph_runtime,
    spans_of,
    trigger_runs,
    upsert_when_registered,
    wait_settled,
)


def states_by_run(sm: EmbeddedStateManager, run_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    return {r: [{"state_id": s.id, "identifier": s.identifier} for s in sm.states(r)] for r in run_ids}


async def wait_for_spans(exporter: InMemorySpanExporter, run_ids: list[str], timeout: float = 30.0) -> None:
    traces = {format_trace_id(r) for r in run_ids}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        spans = flatten(exporter.get_finished_spans())
        roots = sum(1 for s in spans if s.name.startswith("settle ") and s.trace_id in traces)
        executes = sum(1 for s in spans if s.name.startswith("execute ") and s.trace_id in traces)
        if roots >= len(run_ids) and executes >= EXECUTES_PER_RUN * len(run_ids):
            return
        await asyncio.sleep(0.05)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("runs", "sdk"),
    [(1, True), (1, False), (10, True), (10, False), (50, True), (50, False), (200, True)],
    ids=["1-sdk", "1-http", "10-sdk", "10-http", "50-sdk", "50-http", "200-sdk"],
)
async def test_every_state_in_its_runs_trace_embedded(
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    instrumentor: ExosphereInstrumentor,
    runs: int,
    sdk: bool,
) -> None:
    async with EmbeddedStateManager(server_side=True, tracer_provider=tracer_provider) as sm:
        namespace = f"i8-emb-{uuid.uuid4().hex[:8]}"
        async with graph_runtime(sm.uri, sm.api_key, namespace) as (proxy, client):
            started = time.monotonic()
            run_ids = await trigger_runs(client, sm.uri, sm.api_key, namespace, runs, sdk)
            await wait_settled(sm.uri, sm.api_key, namespace, run_ids, timeout=120)
            settled = time.monotonic() - started
            await wait_for_spans(span_exporter, run_ids)
            calls = dict(proxy.calls)
        assert sm._api.side is not None
        sweep = sm._api.side.side.sweeper.stats
    report = check_runs(
        spans_of(run_ids, flatten(span_exporter.get_finished_spans())), states_by_run(sm, run_ids), ug.GRAPH
    )
    print(
        f"\n[embedded side] runs={runs} trigger={'sdk' if sdk else 'http'} {report.summary()} "
        f"runtime run-API calls={calls.get('run_api', 0)} polls={calls.get('enqueue', 0)} "
        f"settled in {settled:.1f}s; sweep: {sweep.passes} passes, {sweep.seconds:.2f}s in all, "
        f"{1000 * sweep.seconds / max(sweep.passes, 1):.1f} ms/pass"
    )
    assert report.problems[:5] == []
    assert report.placed == report.states == runs * ug.STATES_PER_RUN
    assert report.roots_per_run == report.outcomes_per_run == {1: runs} and report.outcomes_malformed == 0
    assert report.duplicate_span_ids == report.dangling_parents == report.dangling_links == 0
    assert report.executes == runs * EXECUTES_PER_RUN and report.executes_misplaced == 0
    assert calls.get("run_api", 0) == 0
    if sdk:
        triggers = [s for s in flatten(span_exporter.get_finished_spans()) if s.name == f"trigger {ug.GRAPH}"]
        assert len(triggers) == runs and all(s.parent_span_id is not None for s in triggers)


@pytest.mark.timeout(120)
async def test_caller_baggage_reaches_every_node_and_a_graph_sampler_gives_whole_runs() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(KeepOneGraph(ug.GRAPH)))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = ExosphereInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    ug.SEEN.clear()
    try:
        async with EmbeddedStateManager(server_side=True, tracer_provider=provider) as sm:
            namespace = f"i8-emb-{uuid.uuid4().hex[:8]}"
            dropped_graph = f"{ug.GRAPH}-dropped"
            async with graph_runtime(sm.uri, sm.api_key, namespace) as (_proxy, client):
                await upsert_when_registered(client, namespace, dropped_graph)
                token = context.attach(baggage.set_baggage("tenant", "acme"))
                try:
                    kept = await trigger_runs(client, sm.uri, sm.api_key, namespace, 3, True)
                    dropped = await trigger_runs(
                        client, sm.uri, sm.api_key, namespace, 3, True, dropped_graph
                    )
                finally:
                    context.detach(token)
                await wait_settled(sm.uri, sm.api_key, namespace, kept + dropped, timeout=60)
                await wait_for_spans(exporter, kept)
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
    spans = flatten(exporter.get_finished_spans())
    report = check_runs(spans_of(kept, spans), states_by_run(sm, kept), ug.GRAPH)
    assert report.placed == report.states == 3 * ug.STATES_PER_RUN
    assert report.roots_per_run == report.outcomes_per_run == {1: 3}
    assert report.executes == 3 * EXECUTES_PER_RUN and sum(s.name.startswith("trigger ") for s in spans) == 3
    assert spans_of(dropped, spans) == []
    assert len(ug.SEEN) == 6 * EXECUTES_PER_RUN
    assert all(seen.get("tenant") == "acme" for seen in ug.SEEN)


@pytest.mark.timeout(120)
async def test_the_server_measures_run_duration_and_queue_wait(
    tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter, instrumentor: ExosphereInstrumentor
) -> None:
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    try:
        async with EmbeddedStateManager(
            server_side=True, tracer_provider=tracer_provider, meter_provider=meters
        ) as sm:
            namespace = f"i8-emb-{uuid.uuid4().hex[:8]}"
            async with graph_runtime(sm.uri, sm.api_key, namespace) as (_proxy, client):
                run_ids = await trigger_runs(client, sm.uri, sm.api_key, namespace, 2, True)
                await wait_settled(sm.uri, sm.api_key, namespace, run_ids, timeout=60)
                await wait_for_spans(span_exporter, run_ids)
        data = reader.get_metrics_data()
    finally:
        meters.shutdown()
    points = {
        metric.name: list(metric.data.data_points)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    (run_duration,) = points["exosphere.run.duration"]
    assert run_duration.count == 2 and run_duration.sum > 0
    assert dict(run_duration.attributes) == {
        "exosphere.namespace": namespace,
        "exosphere.graph.name": ug.GRAPH,
        "exosphere.run.status": "SUCCESS",
    }
    assert sum(p.count for p in points["exosphere.state.queue_wait"]) >= 2 * EXECUTES_PER_RUN
