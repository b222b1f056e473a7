"""The sweep: emits node spans for finished states and the root of every settled run, from stored truth.

Each state manager process runs one sweep loop (started by the first hooked request). A pass reads
the open runs, their states and notes (three queries, whatever the number of runs), claims the
node spans of states that finished and, once a run has settled, its root. Claims are atomic in the
store, so with several processes every span is emitted once. A hook that sees an outcome nudges
the loop, so a run's root ends well within a second of the run settling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from opentelemetry import trace

from exo_otel.core.spans import guard
from exo_otel.server.context import RunContext
from exo_otel.server.records import RunNotes, StateRecord, is_settled
from exo_otel.server.spans import ServerMetrics, emit_node_span, emit_run_outcome
from exo_otel.server.store import RunStore

_logger = logging.getLogger(__name__)

PAUSE_PER_PASS_TIME = 1.0


@dataclass
class SweepStats:
    """What the sweep loop did, for benchmarks and tests."""

    passes: int = 0
    seconds: float = 0.0
    node_spans: int = 0
    outcomes: int = 0
    errors: int = 0


@dataclass
class Sweeper:
    """One process's sweep loop over the runs in ``store``."""

    store: RunStore
    tracer: trace.Tracer
    metrics: ServerMetrics | None = None
    busy_interval: float = 0.25  # between passes while runs are open
    idle_interval: float = 1.0
    max_runs_per_pass: int = 1000
    stats: SweepStats = field(default_factory=SweepStats)
    _task: asyncio.Task[None] | None = None
    _wake: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _attempted: set[str] = field(default_factory=set)

    def nudge(self) -> None:
        """Start the loop in the running event loop if needed, and make it pass soon."""
        with guard("nudging the sweep"):
            loop = asyncio.get_running_loop()
            if self._task is None or self._task.done() or self._loop is not loop:
                self._loop = loop
                self._wake = asyncio.Event()
                self._task = loop.create_task(self._run(), name="exo_otel state manager sweep")
            assert self._wake is not None
            self._wake.set()

    def stop(self) -> None:
        if self._task is not None and not self._task.done() and self._loop is not None:
            with guard("stopping the sweep"):
                self._loop.call_soon_threadsafe(self._task.cancel)
        self._task = None

    async def _run(self) -> None:
        open_runs = 0
        while True:
            wake = self._wake
            assert wake is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.busy_interval if open_runs else self.idle_interval)
            wake.clear()
            started = time.perf_counter()
            try:
                open_runs = await self.sweep_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.stats.errors += 1
                _logger.warning("exo_otel: a state manager sweep failed; the next one retries", exc_info=True)
            if open_runs:
                # Several nudges in a row give one pass per busy interval at most, and a slow pass
                # (a big backlog, a slow database) spaces the next ones out as much as it lasted: the
                # sweep never takes more than half of the event loop's time. (Its wall time includes
                # the requests served meanwhile, so a larger factor would delay roots under load.)
                elapsed = time.perf_counter() - started
                await asyncio.sleep(max(self.busy_interval, PAUSE_PER_PASS_TIME * elapsed))

    async def sweep_once(self) -> int:
        """One pass; returns how many runs were open at its start.

        A constant number of store calls whatever the number of runs: read, claim node spans, claim
        roots, close the settled runs.
        """
        started = time.perf_counter()
        runs = await self.store.open_runs(self.max_runs_per_pass)
        if runs:
            await self._sweep(runs)
        self.stats.passes += 1
        self.stats.seconds += time.perf_counter() - started
        return len(runs)

    async def _sweep(self, runs: list[RunContext]) -> None:
        states, notes = await self.store.run_records([run.run_id for run in runs])
        by_run = {run.run_id: run for run in runs}
        by_id = {state.state_id: state for records in states.values() for state in records}
        finished = [s.state_id for s in by_id.values() if s.settled and s.state_id not in self._attempted]
        won = await self.store.claim_nodes(finished) if finished else set()
        # Lost claims are another process's spans: not tried again while the run is open.
        self._attempted.update(finished)
        states_by_run: dict[str, dict[str, StateRecord]] = {}
        for state_id in won:
            state = by_id[state_id]
            run = by_run[state.run_id]
            if run.sampled:
                with guard("emitting a node span"):
                    run_states = states_by_run.get(run.run_id)
                    if run_states is None:
                        run_states = states_by_run[run.run_id] = {s.state_id: s for s in states[run.run_id]}
                    emit_node_span(self.tracer, run, state, run_states, notes.get(state.run_id) or RunNotes())
                    self.stats.node_spans += 1
        settled = [r for r in by_run if is_settled(states.get(r, []), notes.get(r) or RunNotes())]
        if not settled:
            return
        for run_id in await self.store.claim_outcomes(settled):
            with guard("emitting a run's outcome"):
                emit_run_outcome(self.tracer, self.metrics, by_run[run_id], states[run_id], time.time_ns())
                self.stats.outcomes += 1
        closed_states = [s.state_id for r in settled for s in states.get(r, [])]
        await self.store.close_runs(settled, closed_states)
        self._attempted.difference_update(closed_states)
