"""`exo_otel.server.sweeper`: passes over the embedded adapter's in-memory store (`MemoryRunStore`), driven
by hand. Each `Sweeper` on one store stands for one state manager process; states are written into the
embedded database as upstream would have them, notes through the store as the hooks make them."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exo_otel.core.attributes import SCHEMA_URL
from exo_otel.core.ids import state_span_id, trace_id_for_run
from exo_otel.server.context import RunContext
from exo_otel.server.spans import ServerMetrics
from exo_otel.server.store import CHECK_KEYS
from exo_otel.server.sweeper import DEFAULT_RETENTION_SECONDS, RETENTION_ENV, Sweeper, retention_seconds
from exo_otel_demo.embedded.models import State, StateStatus, StatusChange
from exo_otel_demo.embedded.server_side import MemoryRunStore
from exo_otel_demo.embedded.store import Database

RUN_ID = "9d2c6f0e-3b1a-4c5d-8e7f-001122334455"
MS = 1_000_000


class World:
    """One embedded database, the side's store beside it, and the run's states."""

    def __init__(self) -> None:
        self.db = Database()
        self.store = MemoryRunStore(self.db)
        self.t0_ms = int(time.time() * 1000) - 60_000  # the run started a minute ago

    async def run(self, sampled: bool = True, run_id: str = RUN_ID, **changes: Any) -> RunContext:
        run = RunContext(run_id, "ns", "greet", self.t0_ms * MS, sampled, **changes)
        await self.store.save_run(run)
        await self.store.mark_ready(run)
        return run

    def state(
        self, state_id: str, identifier: str, status: str, at_ms: int, took_ms: int = 100,
        parents: dict[str, str] | None = None, run_id: str = RUN_ID, **changes: Any,
    ) -> State:
        created = self.t0_ms + at_ms
        history = [StatusChange(StateStatus.CREATED, created)]
        if status != "CREATED":
            history.append(StatusChange(StateStatus(status), created + took_ms))
        state = State(
            id=state_id, node_name=identifier.title(), namespace="ns", identifier=identifier,
            graph_name="greet", run_id=run_id, status=StateStatus(status), inputs={},
            parents=parents or {}, enqueue_after=created,
            created_at=dt.datetime.fromtimestamp(created / 1000), history=history, **changes,
        )
        with self.db.lock:
            self.db.add_state(state)
        return state

    def finish(self, state: State, status: str, at_ms: int) -> None:
        with self.db.lock:
            state.status = StateStatus(status)
            state.history.append(StatusChange(StateStatus(status), self.t0_ms + at_ms))

    async def executed(self, *state_ids: str) -> None:
        """What the executed hook notes: next states created after these (the first, its copies)."""
        token = await self.store.begin_next_states(list(state_ids))
        await self.store.end_next_states(token, time.time_ns())


def sweeper(world: World, tracer: trace.Tracer, **options: Any) -> Sweeper:
    return Sweeper(world.store, tracer, **options)


def names(exporter: InMemorySpanExporter) -> list[str]:
    return sorted(s.name for s in exporter.get_finished_spans())


async def two_states_done(world: World) -> None:
    world.state("s1", "start", "SUCCESS", at_ms=10)
    world.state("s2", "finish", "SUCCESS", at_ms=200, parents={"start": "s1"})
    await world.executed("s1")
    await world.executed("s2")


async def test_a_settled_run_gets_its_node_spans_and_its_outcome_then_closes(
    server_tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    world = World()
    await world.run()
    await two_states_done(world)
    sweep = sweeper(world, server_tracer)
    assert await sweep.sweep_once() == 1
    assert names(exporter) == ["node finish", "node start", "settle greet"]
    assert (sweep.stats.node_spans, sweep.stats.outcomes) == (2, 1)
    finish = next(s for s in exporter.get_finished_spans() if s.name == "node finish")
    assert finish.context is not None and finish.context.span_id == state_span_id("s2")
    assert [link.context.span_id for link in finish.links] == [state_span_id("s1")]
    assert not world.store.runs[RUN_ID]["open"] and RUN_ID not in world.store.notes
    assert await world.store.open_runs_by_key(0, CHECK_KEYS, 10) == []
    # Nothing new: the next passes, this process's or another's, emit nothing again.
    assert await sweep.sweep_once(check_all=True) == 0
    await sweeper(world, server_tracer).sweep_once(check_all=True)
    assert len(exporter.get_finished_spans()) == 3


async def test_a_run_with_a_pending_state_gets_node_spans_only_until_it_settles(
    server_tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    world = World()
    await world.run()
    world.state("s1", "start", "SUCCESS", at_ms=10)
    later = world.state("s2", "finish", "QUEUED", at_ms=200, parents={"start": "s1"})
    await world.executed("s1")
    sweep = sweeper(world, server_tracer)
    await sweep.sweep_once()
    assert names(exporter) == ["node start"]
    assert world.store.runs[RUN_ID]["open"]
    assert await sweep.sweep_once() == 0  # nothing touched it since
    world.finish(later, "SUCCESS", at_ms=400)
    await world.executed("s2")
    await sweep.sweep_once()
    assert names(exporter) == ["node finish", "node start", "settle greet"]


async def test_next_states_in_progress_hold_the_run_open(
    server_tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    world = World()
    run = await world.run()
    world.state("s1", "start", "SUCCESS", at_ms=10)
    token = await world.store.begin_next_states(["s1"])
    await world.store.mark_ready(run)  # touched
    sweep = sweeper(world, server_tracer)
    await sweep.sweep_once(check_all=True)
    assert exporter.get_finished_spans() == ()  # s1 looks settled, but its next states are not in yet
    world.state("s2", "finish", "SUCCESS", at_ms=200, parents={"start": "s1"})
    await world.store.end_next_states(token, time.time_ns())
    await world.executed("s2")
    await sweep.sweep_once()
    assert names(exporter) == ["node finish", "node start", "settle greet"]


async def test_fan_out_copies_requeues_and_costs_reach_their_spans(
    server_tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    world = World()
    await world.run()
    world.state("o", "split", "SUCCESS", at_ms=10, took_ms=50)
    world.state("c", "split", "SUCCESS", at_ms=70)
    await world.store.note_requeue("o", time.time_ns() - 30_000 * MS, 1500)
    cost = await world.store.note_cost("o", 0.25)
    refused = await world.store.note_cost("o", 9.0)
    await world.store.withdraw_note(refused)  # the state manager refused that report
    assert cost is not None and await world.store.note_cost("not-a-state", 1.0) is None
    await world.executed("o", "c")
    await sweeper(world, server_tracer).sweep_once()
    spans = {(s.name, (s.attributes or {}).get("exosphere.state.id")): s
             for s in exporter.get_finished_spans()}
    original, copy = spans[("node split", "o")], spans[("node split", "c")]
    assert (copy.attributes or {})["exosphere.state.fanout_of"] == "o"
    assert copy.start_time == original.start_time
    assert [link.context.span_id for link in copy.links] == [state_span_id("o")]
    assert [e.name for e in original.events] == ["exosphere.requeued"]
    settle = dict(spans[("settle greet", None)].attributes or {})
    assert (settle["exosphere.run.cpu_time"], settle["exosphere.run.executions"]) == (0.25, 1)
    assert settle["exosphere.run.states.total"] == 2


async def test_an_unsampled_run_emits_nothing_but_its_duration_and_still_closes(
    server_tracer: trace.Tracer, exporter: InMemorySpanExporter, meter_provider: MeterProvider,
    points: Callable[[str], list[Any]],
) -> None:
    world = World()
    await world.run(sampled=False)
    await two_states_done(world)
    metrics = ServerMetrics.create(meter_provider.get_meter("exo_otel.server", schema_url=SCHEMA_URL))
    await sweeper(world, server_tracer, metrics=metrics).sweep_once()
    assert exporter.get_finished_spans() == ()
    [duration] = points("exosphere.run.duration")
    assert duration.count == 1 and dict(duration.attributes)["exosphere.run.status"] == "SUCCESS"
    assert not world.store.runs[RUN_ID]["open"]


async def test_a_revived_run_emits_only_the_states_created_since_it_was_revived(
    server_tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    world = World()
    world.state("old", "start", "SUCCESS", at_ms=10)
    world.state("new", "start", "SUCCESS", at_ms=5_000)
    revived_at = (world.t0_ms + 4_000) * MS  # between the two states' creation
    run = RunContext(RUN_ID, "ns", "greet", world.t0_ms * MS, True, emit_from_ns=revived_at)
    await world.store.revive_run(run)
    await world.store.note_settled("new")
    await sweeper(world, server_tracer).sweep_once(check_all=True)
    assert [(s.attributes or {})["exosphere.state.id"] for s in exporter.get_finished_spans()] == ["new"]


async def test_a_confirmed_claim_is_never_taken_over(
    server_tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    world = World()
    await world.run()
    await two_states_done(world)
    first = sweeper(world, server_tracer, flush=lambda timeout_ms: True, lease_seconds=0.0)
    await first.sweep_once()
    time.sleep(0.001)
    other = sweeper(world, server_tracer)
    await other.sweep_once(check_all=True)
    assert other.stats.taken_over == 0 and len(exporter.get_finished_spans()) == 3


async def test_claims_a_process_could_not_export_are_kept_and_taken_over_once_their_lease_passed(
    server_tracer: trace.Tracer, exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    world = World()
    await world.run()
    await two_states_done(world)
    await world.store.note_cost("s1", 0.5)
    stalled = sweeper(world, server_tracer, flush=lambda timeout_ms: False, lease_seconds=0.0)
    await stalled.sweep_once()
    assert stalled.stats.unflushed >= 1
    assert len(world.store._leases) == 3  # its claims: leased, not final
    exporter.clear()  # the stalled process's spans never left it; it dies now
    time.sleep(0.001)  # its lease passes
    survivor = sweeper(world, server_tracer, flush=lambda timeout_ms: True)
    with caplog.at_level(logging.WARNING):
        await survivor.sweep_once()
    assert survivor.stats.taken_over == 3
    assert names(exporter) == ["node finish", "node start", "settle greet"]
    assert any("another state manager process had claimed" in r.getMessage() for r in caplog.records)
    assert world.store._leases == {}  # final now
    # The outcome is the run's whole outcome, its cost sum included (docs/state-manager-side.md,
    # "Exactly once": the notes are still there for a process that takes it over).
    settle = next(s for s in exporter.get_finished_spans() if s.name == "settle greet")
    assert (settle.attributes or {}).get("exosphere.run.cpu_time") == 0.5
    # Its claims final, the run closes.
    assert not world.store.runs[RUN_ID]["open"] and RUN_ID not in world.store.notes


async def test_a_root_is_confirmed_as_soon_as_it_is_exported_and_taken_over_as_the_same_span(
    server_tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    world = World()
    quick, dying = (RunContext(RUN_ID[:-1] + end, "ns", "greet", world.t0_ms * MS, True) for end in "01")
    for run in (quick, dying):
        await world.store.save_run(run)
    trigger_end = world.t0_ms * MS + 40 * MS
    exported: list[int] = []
    first = sweeper(world, server_tracer, flush=lambda timeout_ms: not exported.append(timeout_ms))
    await first.start_run(quick, trigger_end)
    assert first._confirmer is not None
    await first._confirmer  # no pass: the root's export and its claim's confirmation follow its emission
    assert exported and world.store._leases == {}
    # A process whose export got out but that died before confirming it (its flush is taken for one that
    # did not complete: the claim stays leased, the span is in the exporter).
    dead = sweeper(world, server_tracer, flush=lambda timeout_ms: False, lease_seconds=0.0)
    await dead.start_run(dying, trigger_end)
    assert dead._confirmer is not None
    await dead._confirmer
    assert list(world.store._leases) == [f"root:{dying.run_id}"]
    time.sleep(0.001)  # its lease passes
    survivor = sweeper(world, server_tracer, flush=lambda timeout_ms: True)
    await survivor.sweep_once()
    assert survivor.stats.taken_over == 1 and world.store._leases == {}
    trace_id = trace_id_for_run(dying.run_id)
    spans = exporter.get_finished_spans()
    original, again = (s for s in spans if s.context and s.context.trace_id == trace_id)
    assert again.end_time == original.end_time == trigger_end  # the end its claimant gave it
    assert again.to_json() == original.to_json()  # ids, times, attributes, links: the same span


async def test_a_settled_run_stays_open_while_a_claim_of_it_is_not_final(
    server_tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    world = World()
    await world.run()
    await two_states_done(world)
    exporting = [False]
    slow = sweeper(world, server_tracer, flush=lambda timeout_ms: exporting[0])
    await slow.sweep_once()
    assert len(exporter.get_finished_spans()) == 3
    assert world.store.runs[RUN_ID]["open"] and RUN_ID in world.store.notes
    other = sweeper(world, server_tracer, flush=lambda timeout_ms: True)
    await other.sweep_once(check_all=True)  # reads the run in full: settled, its outcome lost to `slow`
    assert world.store.runs[RUN_ID]["open"] and RUN_ID in world.store.notes
    assert len(exporter.get_finished_spans()) == 3 and other.stats.taken_over == 0
    exporting[0] = True  # the collector is back
    await slow.sweep_once()
    assert world.store._leases == {}
    assert not world.store.runs[RUN_ID]["open"] and RUN_ID not in world.store.notes
    assert len(exporter.get_finished_spans()) == 3


async def test_a_process_whose_flush_stalls_takes_over_no_one_elses_claims(
    server_tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    world = World()
    await world.run()
    await two_states_done(world)
    dead = sweeper(world, server_tracer, flush=lambda timeout_ms: False, lease_seconds=0.0)
    await dead.sweep_once()
    time.sleep(0.001)
    stalled = sweeper(world, server_tracer, flush=lambda timeout_ms: False)
    stalled._flush_failing = True  # its last flush did not complete either
    await stalled.sweep_once(check_all=True)
    assert stalled.stats.taken_over == 0


async def test_a_closed_run_is_purged_once_its_retention_passed(
    server_tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    world = World()
    await world.run()
    await two_states_done(world)
    keeping = sweeper(world, server_tracer)
    await keeping.sweep_once()
    await keeping.sweep_once(check_all=True)
    assert keeping.stats.purged == 0 and RUN_ID in world.store.runs
    purging = sweeper(world, server_tracer, retention_seconds=0.0)
    await world.run(run_id="0f2c6f0e-3b1a-4c5d-8e7f-001122334455")
    world.state("x1", "start", "SUCCESS", at_ms=10, run_id="0f2c6f0e-3b1a-4c5d-8e7f-001122334455")
    await world.store.note_settled("x1")
    await purging.sweep_once()  # closes the second run, expiring at once
    time.sleep(0.001)
    await purging.sweep_once(check_all=True)
    assert purging.stats.purged == 1
    assert list(world.store.runs) == [RUN_ID]


@pytest.mark.parametrize("open_runs", [10, 1000])
async def test_the_background_check_goes_round_every_open_run_a_small_page_at_a_time(
    server_tracer: trace.Tracer, open_runs: int
) -> None:
    world = World()
    for index in range(open_runs):
        await world.run(run_id=f"{index:08x}-3b1a-4c5d-8e7f-001122334455")
    await world.store.touched_runs(open_runs)  # taken: idle, only the background check reads them
    pages: list[list[str]] = []
    paged = world.store.open_runs_by_key

    async def recorded(from_key: int, to_key: int, limit: int) -> list[RunContext]:
        page = await paged(from_key, to_key, limit)
        pages.append([run.run_id for run in page])
        return page

    world.store.open_runs_by_key = recorded  # type: ignore[method-assign]
    sweep = sweeper(world, server_tracer, page_interval=0.0, check_interval=0.0)

    async def one_round() -> list[list[str]]:
        pages.clear()
        await sweep.sweep_once()
        while sweep._check_from != 0:
            await sweep.sweep_once()
        return list(pages)

    await one_round()  # the first round: the window grows from a small one
    for _ in range(2):
        rounds = await one_round()
        read = [run_id for page in rounds for run_id in page]
        assert sorted(read) == sorted(world.store.runs)  # every open run, once a round
        assert max(len(page) for page in rounds) <= 2 * sweep.check_page
        if open_runs == 10:
            assert len(rounds) == 1  # one page of them all
        else:  # about check_page runs a page (keys hashed from the ids: uniform)
            assert open_runs / (2 * sweep.check_page) <= len(rounds) <= 3 * open_runs / sweep.check_page
    # A round begins at most every check_interval after the last one began: no page until then.
    sweep.check_interval = 3600.0
    await one_round()
    pages.clear()
    assert await sweep.sweep_once() == 0 and pages == []


async def test_nudging_starts_the_loop_which_sweeps_by_itself(
    server_tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    import asyncio

    world = World()
    await world.run()
    await two_states_done(world)
    sweep = sweeper(world, server_tracer)
    sweep.nudge()
    try:
        for _ in range(200):
            if len(exporter.get_finished_spans()) == 3:
                break
            await asyncio.sleep(0.01)
        assert names(exporter) == ["node finish", "node start", "settle greet"]
    finally:
        sweep.stop()


def test_the_retention_is_explicit_or_the_environments_and_a_bad_value_is_refused_or_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(RETENTION_ENV, raising=False)
    assert retention_seconds() == DEFAULT_RETENTION_SECONDS == 7 * 24 * 3600
    assert retention_seconds(0) == 0.0 and retention_seconds(12.5) == 12.5
    for bad in (-1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="run_retention_seconds"):
            retention_seconds(bad)
    monkeypatch.setenv(RETENTION_ENV, " 3600 ")
    assert retention_seconds() == 3600.0
    with caplog.at_level(logging.WARNING):
        for bad_env in ("a week", "-5", "inf"):
            monkeypatch.setenv(RETENTION_ENV, bad_env)
            assert retention_seconds() == DEFAULT_RETENTION_SECONDS
    assert len([r for r in caplog.records if RETENTION_ENV in r.getMessage()]) == 3


async def test_a_run_whose_trigger_process_died_mid_trigger_is_completed_by_another_process(
    server_tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    # The dead process kept the runs' contexts and never made them ready: one had its states created,
    # the other none (upstream's trigger failed with its process).
    world = World()
    begun = RunContext(RUN_ID, "ns", "greet", world.t0_ms * MS, True)
    never = RunContext(RUN_ID[:-2] + "99", "ns", "greet", world.t0_ms * MS, True)
    for run in (begun, never):
        await world.store.save_run(run)
    await two_states_done(world)
    patient = sweeper(world, server_tracer, stalled_trigger_seconds=3600.0)  # the runs are a minute old
    await patient.sweep_once(check_all=True)
    assert exporter.get_finished_spans() == () and patient.stats.stalled_triggers == 0
    sweep = sweeper(world, server_tracer, stalled_trigger_seconds=30.0)
    await sweep.sweep_once(check_all=True)  # the root; the run made ready and touched
    await sweep.sweep_once()
    assert names(exporter) == ["node finish", "node start", "run greet", "settle greet"]
    root = next(s for s in exporter.get_finished_spans() if s.name == "run greet")
    assert root.start_time == root.end_time == begun.start_ns  # the trigger's end is not known
    assert sweep.stats.stalled_triggers == 1 and never.run_id not in world.store.runs
    assert not world.store.runs[RUN_ID]["open"]
    # Another process coming after emits nothing again.
    later = sweeper(world, server_tracer, stalled_trigger_seconds=30.0)
    await later.sweep_once(check_all=True)
    assert len(exporter.get_finished_spans()) == 4 and later.stats.stalled_triggers == 0


async def test_a_slow_trigger_taken_for_dead_keeps_its_run_when_it_completes(
    server_tracer: trace.Tracer, exporter: InMemorySpanExporter
) -> None:
    world = World()
    run = RunContext(RUN_ID, "ns", "greet", world.t0_ms * MS, True)
    await world.store.save_run(run)
    await sweeper(world, server_tracer, stalled_trigger_seconds=30.0).sweep_once(check_all=True)
    assert RUN_ID not in world.store.runs  # no state yet: taken for a trigger that failed with its process
    await two_states_done(world)  # it was only slow: its states come (noted with no run), then its end
    await world.store.mark_ready(run)
    sweep = sweeper(world, server_tracer)
    await sweep.sweep_once()  # touched: no note names its states
    assert exporter.get_finished_spans() == ()
    await sweep.sweep_once(check_all=True)  # the background check reads it in full
    assert names(exporter) == ["node finish", "node start", "settle greet"]
