"""`exo_otel.server.side`: `ServerSide`'s entry points over the embedded adapter's in-memory store, called
as an adapter calls them (states written into the embedded database as upstream would have them)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Sampler

from exo_otel.core.attributes import SCHEMA_URL
from exo_otel.core.ids import run_span_id, state_span_id, trace_id_for_run
from exo_otel.server.records import epoch_ns
from exo_otel.server.side import ServerSide, TakenState
from exo_otel.server.spans import ServerMetrics
from exo_otel.server.store import CHECK_KEYS
from exo_otel_demo.embedded.models import State, StateStatus, StatusChange
from exo_otel_demo.embedded.server_side import EmbeddedServerSide, MemoryRunStore
from exo_otel_demo.embedded.store import Database

RUN_ID = "9d2c6f0e-3b1a-4c5d-8e7f-001122334455"
CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def make_side(
    tracer: trace.Tracer, meter_provider: MeterProvider, sampler: Sampler = ALWAYS_ON, **options: Any
) -> ServerSide:
    meter = meter_provider.get_meter("exo_otel.server", schema_url=SCHEMA_URL)
    return ServerSide(tracer, MemoryRunStore(Database()), sampler, ServerMetrics.create(meter), **options)


@pytest.fixture
async def side(server_tracer: trace.Tracer, meter_provider: MeterProvider) -> AsyncIterator[ServerSide]:
    made = make_side(server_tracer, meter_provider)
    yield made
    made.sweeper.stop()


def add_state(side: ServerSide, state_id: str, status: str, created_ms: int, **changes: Any) -> State:
    store = side.store
    assert isinstance(store, MemoryRunStore)
    state = State(
        id=state_id, node_name="Work", namespace="ns", identifier="work", graph_name="greet", run_id=RUN_ID,
        status=StateStatus(status), inputs={}, enqueue_after=created_ms,
        created_at=dt.datetime.fromtimestamp(created_ms / 1000),
        history=[
            StatusChange(StateStatus.CREATED, created_ms), StatusChange(StateStatus(status), created_ms + 5)
        ],
        **changes,
    )
    with store.db.lock:
        store.db.add_state(state)
    return state


async def started(side: ServerSide, headers: dict[str, str] | None = None) -> Any:
    run = await side.run_starting(RUN_ID, "ns", "greet", time.time_ns() - 10**9, headers)
    await side.run_started(run)
    return run


async def test_a_trigger_emits_the_root_at_once_and_the_answer_names_it(
    side: ServerSide, exporter: InMemorySpanExporter
) -> None:
    run = await started(side, {"traceparent": CALLER, "baggage": "tenant=acme"})
    [root] = exporter.get_finished_spans()
    assert root.name == "run greet" and root.context is not None
    assert (root.context.trace_id, root.context.span_id) == (trace_id_for_run(RUN_ID), run_span_id(RUN_ID))
    assert [link.context.span_id for link in root.links] == [0xB7AD6B7169203331]
    assert side.trigger_answer_extension(run) == {
        "traceparent": f"00-{trace_id_for_run(RUN_ID):032x}-{run_span_id(RUN_ID):016x}-01"
    }
    assert await side.store.load_runs([RUN_ID]) == {RUN_ID: run}
    assert run.baggage == {"tenant": "acme"}
    # The root is claimed: emitting it again (another process handling the same run) emits nothing.
    await side.run_started(run)
    assert len(exporter.get_finished_spans()) == 1


async def test_an_unsampled_run_has_no_root_and_says_so_in_its_traceparent(
    server_tracer: trace.Tracer, meter_provider: MeterProvider, exporter: InMemorySpanExporter
) -> None:
    side = make_side(server_tracer, meter_provider, ALWAYS_OFF)
    try:
        run = await started(side)
        assert not run.sampled and exporter.get_finished_spans() == ()
        assert side.trigger_answer_extension(run)["traceparent"].endswith("-00")
    finally:
        side.sweeper.stop()


async def test_taken_states_get_their_runs_extension_and_their_queue_wait_is_recorded(
    side: ServerSide, points: Callable[[str], list[Any]]
) -> None:
    run = await started(side, {"baggage": "tenant=acme"})
    created = time.time_ns() - 2 * 10**9
    taken = [
        TakenState("s1", RUN_ID, {"start": "s0"}, 1, created),
        TakenState("s2", "a-run-from-before-the-side", {}, 0, created),
    ]
    extensions = await side.states_taken(taken, "ns")
    assert extensions == {
        "s1": {
            "run_id": RUN_ID, "graph_name": "greet", "parents": {"start": "s0"}, "retry_count": 1,
            **run.carrier(), "node_spans": "server",
        }
    }
    assert "baggage" in extensions["s1"]
    [wait] = points("exosphere.state.queue_wait")
    assert wait.count == 1 and wait.sum == pytest.approx(2.0, abs=0.5)
    assert dict(wait.attributes) == {"exosphere.namespace": "ns", "exosphere.graph.name": "greet"}
    assert await side.states_taken([], "ns") == {}


async def test_without_node_spans_by_the_server_the_extension_says_nothing_of_them(
    server_tracer: trace.Tracer, meter_provider: MeterProvider
) -> None:
    side = make_side(server_tracer, meter_provider, node_spans_by_server=False)
    try:
        await started(side)
        [extension] = (await side.states_taken([TakenState("s1", RUN_ID, {}, 0)], "ns")).values()
        assert "node_spans" not in extension and extension["run_id"] == RUN_ID
    finally:
        side.sweeper.stop()


async def test_a_run_whose_trigger_failed_is_forgotten(side: ServerSide) -> None:
    await side.run_starting(RUN_ID, "ns", "greet", time.time_ns(), None)
    await side.run_failed_to_start(RUN_ID)
    assert await side.store.load_runs([RUN_ID]) == {}
    assert await side.states_taken([TakenState("s1", RUN_ID, {}, 0)], "ns") == {}


async def test_run_contexts_are_cached_for_a_bounded_time_only(
    server_tracer: trace.Tracer, meter_provider: MeterProvider
) -> None:
    keeping = make_side(server_tracer, meter_provider)
    forgetting = make_side(server_tracer, meter_provider, retention_seconds=0.0)  # cached 0 s
    try:
        for side in (keeping, forgetting):
            await side.run_starting(RUN_ID, "ns", "greet", time.time_ns(), None)
            await side.store.discard_run(RUN_ID)  # as another process's purge would
        assert list(await keeping.contexts([RUN_ID])) == [RUN_ID]
        assert await forgetting.contexts([RUN_ID]) == {}
    finally:
        keeping.sweeper.stop()
        forgetting.sweeper.stop()


async def test_run_contexts_past_their_age_leave_the_cache_when_another_run_is_remembered(
    server_tracer: trace.Tracer, meter_provider: MeterProvider
) -> None:
    side = make_side(server_tracer, meter_provider, retention_seconds=1.0)  # cached 0.1 s
    try:
        for index in range(50):
            await side.run_starting(f"{RUN_ID[:-2]}{index:02d}", "ns", "greet", time.time_ns(), None)
        assert len(side._contexts) == 50  # all within their age
        time.sleep(0.15)
        await side.run_starting(RUN_ID, "ns", "greet", time.time_ns(), None)
        # The 50 older ones are gone from memory (their records are still in the store), not kept until
        # 10,000 runs push them out.
        assert list(side._contexts) == [RUN_ID]
        assert len(await side.store.load_runs(f"{RUN_ID[:-2]}{index:02d}" for index in range(50))) == 50
    finally:
        side.sweeper.stop()


@pytest.mark.parametrize("header", [None, "", "abc", "-1", "nan", "inf", "1e300", "0.1" * 20])
async def test_a_report_without_a_valid_cpu_time_notes_nothing(side: ServerSide, header: str | None) -> None:
    await started(side)
    add_state(side, "s1", "EXECUTED", int(time.time() * 1000))
    headers = {} if header is None else {"x-exo-otel-cpu-time": header}
    assert await side.attempt_reported("s1", headers) is None
    assert await side.attempt_reported("s1", None) is None


async def test_reported_cpu_times_reach_the_outcome_unless_the_report_was_refused(
    side: ServerSide, exporter: InMemorySpanExporter
) -> None:
    await started(side)
    now_ms = int(time.time() * 1000)
    add_state(side, "s1", "SUCCESS", now_ms - 500)
    assert await side.attempt_reported("s1", {"x-exo-otel-cpu-time": "0.125"}) is not None
    refused = await side.attempt_reported("s1", {"x-exo-otel-cpu-time": "7.0"})
    assert refused is not None
    await side.report_refused(refused)
    assert await side.attempt_reported("not-a-state", {"x-exo-otel-cpu-time": "1"}) is None
    await side.store.note_settled("s1")
    await side.sweeper.sweep_once()
    settle = next(s for s in exporter.get_finished_spans() if s.name == "settle greet")
    attributes = dict(settle.attributes or {})
    assert (attributes["exosphere.run.cpu_time"], attributes["exosphere.run.executions"]) == (0.125, 1)


async def test_a_manual_retry_reopens_a_settled_run_and_its_node_span_links_the_retried_state(
    side: ServerSide, exporter: InMemorySpanExporter
) -> None:
    await started(side)
    now_ms = int(time.time() * 1000)
    add_state(side, "s1", "ERRORED", now_ms - 900)
    await side.store.note_settled("s1")
    await side.sweeper.sweep_once()
    assert sorted(s.name for s in exporter.get_finished_spans()) == ["node work", "run greet", "settle greet"]
    assert await side.store.open_runs_by_key(0, CHECK_KEYS, 10) == []
    retried = add_state(side, "s1-retry", "SUCCESS", now_ms - 100)
    await side.state_retried("s1-retry", "s1", RUN_ID, "ns", "greet", epoch_ns(retried.created_at) or 0)
    assert [r.run_id for r in await side.store.open_runs_by_key(0, CHECK_KEYS, 10)] == [RUN_ID]
    await side.store.note_settled("s1-retry")
    await side.sweeper.sweep_once()
    names = sorted(s.name for s in exporter.get_finished_spans())
    assert names == ["node work", "node work", "run greet", "settle greet"]  # one outcome, ever
    by_state = {(s.attributes or {}).get("exosphere.state.id"): s for s in exporter.get_finished_spans()}
    retry = by_state["s1-retry"]
    [link] = retry.links
    assert link.context.span_id == state_span_id("s1")
    assert dict(link.attributes or {}) == {"exosphere.link.retry_of": True}


async def test_a_retry_after_the_runs_records_were_purged_revives_it_from_the_retry_on(
    side: ServerSide, exporter: InMemorySpanExporter
) -> None:
    now_ms = int(time.time() * 1000)
    add_state(side, "old", "ERRORED", now_ms - 5_000)
    new = add_state(side, "new", "SUCCESS", now_ms - 100)
    created_ns = epoch_ns(new.created_at)  # as the adapters read it
    assert created_ns is not None
    # No record of the run: its retention passed, or it ran before the side was loaded.
    await side.state_retried("new", "old", RUN_ID, "ns", "greet", created_ns)
    [revived] = (await side.store.load_runs([RUN_ID])).values()
    assert revived.emit_from_ns == created_ns and revived.baggage == {}
    await side.store.note_settled("new")
    await side.sweeper.sweep_once(check_all=True)
    # Only the retry's node span: earlier states were emitted, and so was the run's outcome.
    emitted = [(s.name, (s.attributes or {}).get("exosphere.state.id"))
               for s in exporter.get_finished_spans()]
    assert emitted == [("node work", "new")]


async def test_the_embedded_adapter_pins_ids_on_any_sdk_provider_and_carries_the_schema_url(
    meter_provider: MeterProvider, reader: Any
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()  # no id generator of exo_otel's installed: the adapter installs it
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    adapter = EmbeddedServerSide(Database(), provider, meter_provider)
    try:
        answer = {"run_id": RUN_ID, "status": "CREATED"}
        extended = await adapter.triggered(answer, "ns", "greet", time.time_ns(), {})
        traceparent = f"00-{trace_id_for_run(RUN_ID):032x}-{run_span_id(RUN_ID):016x}-01"
        assert extended == {**answer, "traceparent": traceparent}
        assert answer == {"run_id": RUN_ID, "status": "CREATED"}  # a new answer; the handler's is untouched
        [root] = exporter.get_finished_spans()
        assert root.context is not None and root.context.span_id == run_span_id(RUN_ID)
        assert root.instrumentation_scope is not None
        assert root.instrumentation_scope.schema_url == SCHEMA_URL
        assert adapter.side.metrics is not None
        adapter.side.metrics.run_duration.record(1.0)
        data = reader.get_metrics_data()
        assert {sc.scope.schema_url for r in data.resource_metrics for sc in r.scope_metrics} == {SCHEMA_URL}
    finally:
        await adapter.close()
        provider.shutdown()
