"""The sweep: emits node spans for finished states and the outcome of every settled run, from stored truth.

Each state manager process runs one sweep loop (started by the first hooked request). Work follows
activity: a pass takes the runs the hooks touched since their last sweep, reads only the notes not
seen yet and the states they name, claims the node spans of states that settled and, when a run has
no pending state left, its outcome. A run with nothing new costs nothing; a bounded background check
reads a small page of open runs in full at a time, going round them, for what no hook saw. Claims are
atomic in the store, so with several processes every span is emitted once; they are leased until the
pass's spans are exported (then confirmed), so a process that dies first leaves them to another. A
hook that sees an outcome nudges the loop, so node spans and outcomes follow well within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from opentelemetry import trace

from exo_otel.core.spans import guard
from exo_otel.server.context import RunContext
from exo_otel.server.records import RunNotes, StateRecord, is_settled
from exo_otel.server.spans import ServerMetrics, emit_node_span, emit_run_outcome, emit_run_root
from exo_otel.server.store import CHECK_KEYS, RunStore, check_key

_logger = logging.getLogger(__name__)

PAUSE_PER_PASS_TIME = 1.0
DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600.0
# Node claims remembered as tried, at most: past it the memory is dropped, and claims lost to another
# process are asked again (and lost again: correct, one more database round).
MAX_ATTEMPTED = 200_000
# A claim is final once its span is exported (the tracer provider flushed after the pass emitted it);
# until then it is leased: a process that dies before exporting leaves it to be taken over after this.
CLAIM_LEASE_SECONDS = 60.0
FLUSH_TIMEOUT_MS = 10_000
# A trigger not complete this long after it began is taken for one whose process died in it (after the
# run's context was kept, before it was made ready): another process completes what it can of it.
STALLED_TRIGGER_SECONDS = CLAIM_LEASE_SECONDS
# Claims kept unconfirmed while exports fail, at most: past it the oldest are made final (their spans
# wait in, or were dropped from, the span processor's own bounded queue: re-emitting cannot help).
MAX_UNCONFIRMED = 100_000
# Settled runs kept open for a claim not final yet that a process re-reads at its passes, at most (past
# it, the background check closes the others as it comes round to them).
MAX_HELD = 10_000
# Flushes the tracer provider's span processors within a timeout (ms); True when everything went out.
Flush = Callable[[int], bool]
CHECK_WINDOW_GROWTH = 4  # at most, from one page to the next


RETENTION_ENV: Final = "OTEL_PYTHON_EXOSPHERE_RUN_RETENTION_SECONDS"
"""Seconds a settled run's records are kept in the state manager's database. Default 7 days."""


def retention_seconds(explicit: float | None = None) -> float:
    """The retention: ``explicit`` when given (a number >= 0, else ValueError), else the environment's
    (a bad value is logged and the default used: the launcher's start-up must not fail on it)."""
    if explicit is not None:
        value = float(explicit)
        if not 0 <= value < float("inf"):
            raise ValueError(f"run_retention_seconds must be a number >= 0, not {explicit!r}")
        return value
    raw = os.environ.get(RETENTION_ENV, "").strip()
    if not raw:
        return DEFAULT_RETENTION_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        _logger.warning("%s=%r is not a number >= 0; using %s", RETENTION_ENV, raw, DEFAULT_RETENTION_SECONDS)
        return DEFAULT_RETENTION_SECONDS
    return value


@dataclass
class SweepStats:
    """What the sweep loop did, for benchmarks and tests."""

    passes: int = 0
    seconds: float = 0.0
    node_spans: int = 0
    outcomes: int = 0
    errors: int = 0
    purged: int = 0  # runs whose records went after their retention
    taken_over: int = 0  # claims whose process died before exporting, emitted by this one
    stalled_triggers: int = 0  # runs whose trigger's process died mid-trigger, made ready by this one
    unflushed: int = 0  # flushes that did not complete: their claims kept (lease renewed), flushed again
    check_pages: int = 0  # pages of the background check read
    check_runs: int = 0  # open runs those pages held
    check_seconds: float = 0.0  # the time of the passes that read a page (included in `seconds`)


@dataclass
class Sweeper:
    """One process's sweep loop over the runs in ``store``."""

    store: RunStore
    tracer: trace.Tracer
    metrics: ServerMetrics | None = None
    busy_interval: float = 0.25  # between passes while runs are touched
    idle_interval: float = 1.0
    max_runs_per_pass: int = 500
    # The background check: a round over every open run, a page of about `check_page` runs read in full
    # every `page_interval`; a round begins at most every `check_interval` (and the purge and the
    # take-over of stale claims come that often).
    check_interval: float = 10.0
    check_page: int = 10
    page_interval: float = 1.0
    # How long a settled run's records (context, claims) are kept: a late event within it (a manual
    # retry of one of its states) is still placed and emitted once; after it, runtimes place it.
    retention_seconds: float = DEFAULT_RETENTION_SECONDS
    purge_page: int = 1000
    flush: Flush | None = None  # None: spans are out once emitted (no SDK provider to flush)
    lease_seconds: float = CLAIM_LEASE_SECONDS
    stalled_trigger_seconds: float = STALLED_TRIGGER_SECONDS
    stats: SweepStats = field(default_factory=SweepStats)
    _task: asyncio.Task[None] | None = None
    _wake: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    # Node claims this process tried in runs still open (lost ones are another process's spans).
    _attempted: set[str] = field(default_factory=set)
    _check_from: int = 0  # where the background check's next page starts (a check key)
    # The key span of its next page (about `check_page` runs). A fresh process knows nothing of how many
    # runs are open: its first page spans every key, and reads the `2 * check_page` first at most.
    _check_window: int = CHECK_KEYS
    _busy: int = 0  # the runs the last pass swept for a touch, and the triggers it completed
    _round_began: float = 0.0
    _round_runs: int = 0  # open runs the round read so far
    _next_page: float = 0.0
    _next_upkeep: float = 0.0  # the purge and the take-over
    _purge_due: bool = False
    _takeover_due: bool = False
    _flush_failing: bool = False  # the last flush did not complete: this process cannot export now
    # Claims won and emitted, not yet confirmed (confirmed once a flush exported them), oldest first.
    _unconfirmed: dict[str, None] = field(default_factory=dict)
    # Exports and confirms what was emitted as soon as it was (`_confirm_soon`), beside the pass.
    _confirmer: asyncio.Task[None] | None = None
    # Settled runs left open because a node or outcome claim of theirs was not final (a process could
    # not export it, or died first): their notes stay for whoever emits that span; read again and
    # closed at a later pass once the claims are final (the background check closes the others).
    _held: set[str] = field(default_factory=set)

    def nudge(self) -> None:
        """Start the loop in the running event loop if needed, and make it pass soon: a hook touched a
        run (every touch nudges the process that made it, which is how touched runs get swept)."""
        with guard("nudging the sweep"):
            self._running().set()

    def start(self) -> None:
        """Start the loop in the running event loop if needed, with no pass sooner (nothing changed)."""
        with guard("starting the sweep"):
            self._running()

    def _running(self) -> asyncio.Event:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop:
            self._loop = loop
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._run(), name="exo_otel state manager sweep")
        assert self._wake is not None
        return self._wake

    def stop(self) -> None:
        if self._task is not None and not self._task.done() and self._loop is not None:
            with guard("stopping the sweep"):
                self._loop.call_soon_threadsafe(self._task.cancel)
        self._task = None

    async def _run(self) -> None:
        busy = 0
        failed = False
        while True:
            wake = self._wake
            assert wake is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.busy_interval if busy else self.idle_interval)
            woken = wake.is_set()
            wake.clear()
            # Idle (not nudged, nothing left from the last pass): nothing to ask the database until the
            # background check is due. A run touched by a process that died before its sweep passed
            # is swept at another process's next check.
            due = min(self._next_page, self._next_upkeep)
            if not (woken or busy or failed or self._unconfirmed or time.monotonic() >= due):
                continue
            started = time.perf_counter()
            failed = False
            try:
                # A page of the background check has its own schedule: only touched runs (and completed
                # triggers) make the loop busy, and pass again soon for what they may bring next.
                await self.sweep_once()
                busy = self._busy
            except asyncio.CancelledError:
                # The process is stopping (its event loop cancels its tasks): what this pass emitted is
                # exported and confirmed now, else another process would emit it again after the lease
                # (directly: the background confirmation may be cancelled with the loop's other tasks).
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(self._export_and_confirm(), FLUSH_TIMEOUT_MS / 1000 + 5)
                raise
            except Exception:
                failed = True
                self.stats.errors += 1
                _logger.warning("exo_otel: a state manager sweep failed; the next one retries", exc_info=True)
            if busy:
                # Several nudges in a row give one pass per busy interval at most, and a slow pass
                # (a big backlog, a slow database) spaces the next ones out as much as it lasted: the
                # sweep never takes more than half of the event loop's time. (Its wall time includes
                # the requests served meanwhile, so a larger factor would delay spans under load.)
                elapsed = time.perf_counter() - started
                await asyncio.sleep(max(self.busy_interval, PAUSE_PER_PASS_TIME * elapsed))

    async def sweep_once(self, check_all: bool = False) -> int:
        """One pass; returns how many runs it swept (0: nothing was new).

        The touched runs, then, when due (or with ``check_all``: every open run, up to
        `max_runs_per_pass`), the background check's page of open runs read in full. A run touched
        again while it is swept is swept again at the next pass.
        """
        started, pages_before = time.perf_counter(), self.stats.check_pages
        await self.store.ensure_indexes()
        touched = await self.store.touched_runs(self.max_runs_per_pass)
        checked = await self._check_page(check_all, {run.run_id for run in touched})
        if touched:
            await self._sweep_changes(touched)
        if checked:
            await self._sweep_in_full(checked)
        completed = 0
        if self._takeover_due:
            self._takeover_due = False
            completed = await self._complete_stalled_triggers()
            if not self._flush_failing:  # taking over what this process cannot export helps nobody
                await self._take_over_stale()
        await self._confirm()
        if self._held:
            await self._close_held()
        if self._purge_due:
            self._purge_due = False
            self.stats.purged += await self.store.purge_expired(time.time_ns(), self.purge_page)
        self._busy = len(touched) + completed
        elapsed = time.perf_counter() - started
        self.stats.passes += 1
        self.stats.seconds += elapsed
        if self.stats.check_pages != pages_before:
            self.stats.check_seconds += elapsed
        return len(touched) + len(checked) + completed

    async def _complete_stalled_triggers(self) -> int:
        """Do for the runs whose trigger's process died in it what the trigger's end would have done
        (`start_run`; the root ends where it starts: the trigger's end is unknown). A run none of whose
        states was created is no run (upstream failed its trigger): its context goes. Returns how many
        were made ready."""
        started_before = time.time_ns() - int(self.stalled_trigger_seconds * 1e9)
        stalled = await self.store.stalled_triggers(started_before, self.max_runs_per_pass)
        if not stalled:
            return 0
        begun = await self.store.runs_with_states([run.run_id for run in stalled])
        for run in stalled:
            if run.run_id in begun:
                await self.start_run(run, run.start_ns)
            else:
                await self.store.discard_run(run.run_id)
        self.stats.stalled_triggers += len(begun)
        _logger.warning(
            "exo_otel: completed %d run(s) whose trigger never completed in %.0f s (its state manager "
            "process stopped in it), forgot %d that had no state", len(begun), self.stalled_trigger_seconds,
            len(stalled) - len(begun),
        )
        return len(begun)

    async def _check_page(self, check_all: bool, touched: set[str]) -> list[RunContext]:
        now = time.monotonic()
        if check_all or now >= self._next_upkeep:
            self._next_upkeep = now + self.check_interval
            self._purge_due = self._takeover_due = True
        if check_all:
            page = await self.store.open_runs_by_key(0, CHECK_KEYS, self.max_runs_per_pass)
        elif now >= self._next_page:
            page = await self._next_check_page(now)
        else:
            return []
        return [run for run in page if run.run_id not in touched]

    async def _next_check_page(self, now: float) -> list[RunContext]:
        """The next page of the round: the open runs in the next window of check keys, as wide as about
        `check_page` runs were in the last round (keys are uniform), so a page costs the same whatever
        the number of open runs; at most twice that many are read (then the page ends at the last one
        and the window narrows), and an empty page widens it. Past the end of the keys the round is
        over; the next begins `check_interval` after this one began: a few open runs are read once a
        round, many `check_page` every `page_interval`."""
        start = self._check_from
        if start == 0:
            self._round_began, self._round_runs = now, 0
        end = min(CHECK_KEYS, start + self._check_window)
        limit = 2 * self.check_page
        page = await self.store.open_runs_by_key(start, end, limit)
        self.stats.check_pages += 1
        self.stats.check_runs += len(page)
        self._round_runs += len(page)
        if len(page) == limit:  # more runs than thought (many opened since): a narrower window
            end = check_key(page[-1].run_id) + 1
            self._check_window = max(1, (end - start) * self.check_page // limit)
        elif not page:  # fewer (many closed since): a wider one
            self._check_window = min(CHECK_KEYS, self._check_window * CHECK_WINDOW_GROWTH)
        self._next_page = now + self.page_interval
        self._check_from = end
        if end >= CHECK_KEYS:  # the round is over, every open run counted: the next round's window
            self._check_window = max(1, CHECK_KEYS * self.check_page // max(1, self._round_runs))
            self._check_from = 0
            self._next_page = max(self._next_page, self._round_began + self.check_interval)
        return page

    async def _sweep_changes(self, runs: list[RunContext]) -> None:
        """What changed in these runs since their last sweep; the runs that may have settled in full."""
        run_ids = [run.run_id for run in runs]
        states, notes = await self.store.run_changes(run_ids)
        by_run = {run.run_id: run for run in runs}
        known = {s.state_id: s for records in states.values() for s in records}
        changed = [known[s] for r in run_ids for s in sorted(notes[r].changed) if s in known]
        await self._emit_nodes(by_run, changed, states, notes)
        # Only a state settling can settle its run: ask the store about those runs alone.
        maybe = [r for r in run_ids if notes[r].changed and not notes[r].next_states_pending]
        unsettled = await self.store.unsettled_runs(maybe) if maybe else set()
        settled = [by_run[r] for r in maybe if r not in unsettled]
        if settled:
            await self._sweep_in_full(settled)
        await self.store.notes_seen([n for r in run_ids for n in notes[r].unseen])

    async def _sweep_in_full(self, runs: list[RunContext]) -> None:
        """Every state and note of these runs: node spans for any state not tried yet (what no note
        named, for one), and the outcome of those that settled, which are then closed."""
        by_run = {run.run_id: run for run in runs}
        states, notes = await self.store.run_records(list(by_run))
        await self._emit_nodes(by_run, [s for records in states.values() for s in records], states, notes)
        settled = [r for r in by_run if is_settled(states.get(r, []), notes.get(r) or RunNotes())]
        if not settled:
            return
        for run_id in await self.store.claim_outcomes(settled, self.lease_until()):
            self._unconfirmed[f"outcome:{run_id}"] = None
            with guard("emitting a run's outcome"):
                run_notes = notes.get(run_id) or RunNotes()
                emit_run_outcome(self.tracer, self.metrics, by_run[run_id], states[run_id], run_notes)
                self.stats.outcomes += 1
        # Confirmed before the run closes (its notes go): a taken-over outcome still has them. A run
        # with a claim that is not final (this process's flush did not complete, or another process's
        # claim is leased) stays open until it is: that span may yet be taken over, from the notes.
        await self._confirm()
        held = await self.store.unconfirmed_runs(settled)
        if held and len(self._held) < MAX_HELD:
            self._held.update(held)
        closing = [r for r in settled if r not in held]
        if closing:
            await self.store.close_runs(closing, time.time_ns() + int(self.retention_seconds * 1e9))
        self._attempted.difference_update(s.state_id for r in closing for s in states.get(r, []))

    async def _close_held(self) -> None:
        """The held runs whose claims are final now: read in full again (a retry may have reopened one),
        and closed."""
        ready = self._held - await self.store.unconfirmed_runs(sorted(self._held))
        if ready:
            self._held -= ready
            runs = await self.store.load_runs(ready)
            await self._sweep_in_full(list(runs.values()))

    async def _emit_nodes(
        self,
        by_run: dict[str, RunContext],
        states: list[StateRecord],
        run_states: dict[str, list[StateRecord]],
        notes: dict[str, RunNotes],
    ) -> None:
        finished = {
            s.state_id: s.run_id
            for s in states
            if s.settled
            and s.state_id not in self._attempted
            and s.created_ns >= by_run[s.run_id].emit_from_ns  # a revived run's earlier states: emitted
        }
        won = await self.store.claim_nodes(finished, self.lease_until()) if finished else set()
        self._unconfirmed.update((f"node:{state_id}", None) for state_id in won)
        # Lost claims are another process's spans: not tried again while the run is open.
        if len(self._attempted) + len(finished) > MAX_ATTEMPTED:
            self._attempted.clear()
        self._attempted.update(finished)
        by_id = {s.state_id: s for s in states}
        known: dict[str, dict[str, StateRecord]] = {}
        for state_id in won:
            state = by_id[state_id]
            run = by_run[state.run_id]
            if run.sampled:
                with guard("emitting a node span"):
                    of_run = known.get(run.run_id)
                    if of_run is None:
                        of_run = known[run.run_id] = {s.state_id: s for s in run_states.get(run.run_id, [])}
                    emit_node_span(self.tracer, run, state, of_run, notes.get(run.run_id) or RunNotes())
                    self.stats.node_spans += 1
        if won:
            self._confirm_soon()

    def lease_until(self) -> int:
        """When a claim made now is left to other processes, unless confirmed by then."""
        return time.time_ns() + int(self.lease_seconds * 1e9)

    async def start_run(self, run: RunContext, root_end_ns: int) -> None:
        """What a trigger's end does, in the process that handled it or for one whose process died in it:
        claim the run's root (its end kept with the claim) and, if won, emit it, exported and confirmed
        right away (`_confirm_soon`); then make the run ready and touched, so that a pass sweeps it."""
        if await self.store.claim_root(run.run_id, self.lease_until(), root_end_ns):
            with guard("emitting a run's root"):
                emit_run_root(self.tracer, run, root_end_ns)
            self._unconfirmed[f"root:{run.run_id}"] = None
            self._confirm_soon()
        await self.store.mark_ready(run)

    def _confirm_soon(self) -> None:
        """Export and confirm what was just emitted now, beside the pass (not at its end, after its other
        queries): a span exported is confirmed one database write later, which is all the time a process
        that dies has to leave an exported span to be emitted again (the same span: see `start_run`)."""
        with guard("confirming the emitted spans"):
            if self._confirmer is None or self._confirmer.done():
                self._confirmer = asyncio.get_running_loop().create_task(self._confirm_in_background())

    async def _confirm_in_background(self) -> None:
        try:
            while self._unconfirmed and not self._flush_failing:
                await self._export_and_confirm()
        except Exception:
            self.stats.errors += 1
            _logger.warning("exo_otel: confirming exported spans failed; a later pass retries", exc_info=True)

    async def _confirm(self) -> None:
        """Every claim emitted so far confirmed (or, while exports fail, renewed) before this returns:
        the confirmation in flight, if any, then what is left."""
        confirmer, loop = self._confirmer, asyncio.get_running_loop()
        if confirmer is not None and not confirmer.done() and confirmer.get_loop() is loop:
            await asyncio.shield(confirmer)  # it logs its own failures; what it left is done below
        await self._export_and_confirm()

    async def _export_and_confirm(self) -> None:
        """Export what this process emitted (flush), then make its claims final. While a flush does not
        complete (a collector down or slow) the claims stay this live process's: their lease is renewed
        and the next pass flushes again. Only a process that died leaves its claims to the others.
        Claims leave `_unconfirmed` only once confirmed, so a cancellation at any await here loses none;
        two of these at once only confirm some claims twice."""
        if not self._unconfirmed:
            return
        keys = list(self._unconfirmed)
        if self.flush is not None:
            flushed = False
            with guard("exporting the swept spans"):
                flushed = await asyncio.to_thread(self.flush, FLUSH_TIMEOUT_MS)
            self._flush_failing = not flushed
            if not flushed:
                self.stats.unflushed += 1
                overflow = keys[: max(0, len(keys) - MAX_UNCONFIRMED)]
                await self.store.renew_claims(keys[len(overflow):], self.lease_until())
                if overflow:
                    await self.store.confirm_claims(overflow)
                    self._forget(overflow)
                return
        await self.store.confirm_claims(keys)
        self._forget(keys)

    def _forget(self, confirmed: list[str]) -> None:
        for key in confirmed:
            self._unconfirmed.pop(key, None)

    async def _take_over_stale(self) -> None:
        """Emit the spans of claims whose process died before exporting them (their lease passed)."""
        now = time.time_ns()
        taken = await self.store.take_over_stale(now, self.lease_until(), self.max_runs_per_pass)
        if not taken:
            return
        runs = await self.store.load_runs({claim.run_id for claim in taken.values()})
        states, notes = await self.store.run_records(list(runs))
        if len(self._held) < MAX_HELD:  # closed once these claims are final, if settled
            self._held.update(runs)
        by_id = {run_id: {s.state_id: s for s in records} for run_id, records in states.items()}
        emitted = 0
        for key, (run_id, root_end_ns) in taken.items():
            run = runs.get(run_id)
            self._unconfirmed[key] = None
            if run is None or not run.sampled:
                continue  # nothing to emit: the claim is made final
            kind, _, target = key.partition(":")
            run_notes = notes.get(run_id) or RunNotes()
            of_run = by_id.get(run_id, {})
            with guard("emitting a taken-over span"):
                if kind == "root":
                    # The end its claimant gave it, so that it is the same span if that one got out too
                    # (a claim made before ends were kept: it ends where it starts).
                    emit_run_root(self.tracer, run, root_end_ns if root_end_ns is not None else run.start_ns)
                elif kind == "node" and target in of_run:
                    emit_node_span(self.tracer, run, of_run[target], of_run, run_notes)
                    self.stats.node_spans += 1
                elif kind == "outcome":
                    emit_run_outcome(self.tracer, self.metrics, run, states.get(run_id, []), run_notes)
                    self.stats.outcomes += 1
                else:
                    continue
                self.stats.taken_over += 1
                emitted += 1
        # An operator wants to know: a process stopped (killed, crashed) with spans it had not exported.
        _logger.warning(
            "exo_otel: emitted %d span(s) another state manager process had claimed and not exported "
            "(it stopped before its claims were final)", emitted
        )
