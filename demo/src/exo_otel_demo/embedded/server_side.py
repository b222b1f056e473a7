"""The embedded state manager's adapter to the state manager side (`exo_otel.server`).

With ``EmbeddedStateManager(server_side=True)`` the embedded server serves the same enqueue and
trigger extensions and emits the same ``run`` and ``node`` spans as the real state manager with
the side loaded, through the same core: only the store differs (in memory: the embedded server is
one process). The handlers call `EmbeddedServerSide` at the same moments the upstream patches do.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import itertools
import time
from array import array
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from opentelemetry import metrics, trace

from exo_otel.core import attributes as attr
from exo_otel.core.providers import flush_spans, install_run_id_generator
from exo_otel.core.spans import guard
from exo_otel.server.context import RunContext
from exo_otel.server.records import PENDING_STATUSES, RunNotes, StateRecord, apply_note, epoch_ns
from exo_otel.server.sampling import install_stored_decision
from exo_otel.server.side import ServerSide, TakenState
from exo_otel.server.spans import ServerMetrics
from exo_otel.server.store import StaleClaim, check_key
from exo_otel.server.sweeper import retention_seconds
from exo_otel.version import __version__
from exo_otel_demo.embedded.models import State, StateStatus
from exo_otel_demo.embedded.operations import Job
from exo_otel_demo.embedded.store import Database


def _record(state: State) -> StateRecord:
    # The report time: when it became EXECUTED (its later SUCCESS is bookkeeping), else its last change.
    ended = next(
        (c.at_ms for c in state.history if c.status == StateStatus.EXECUTED), state.history[-1].at_ms
    )
    created = epoch_ns(state.created_at) or 0
    return StateRecord(
        state_id=state.id,
        run_id=state.run_id,
        identifier=state.identifier,
        node_name=state.node_name,
        status=state.status.value,
        created_ns=created,
        updated_ns=max(created, ended * 1_000_000),
        enqueue_after_ms=state.enqueue_after,
        retry_count=state.retry_count,
        fanout_id=state.fanout_id,
        parent_ids=tuple(state.parents.values()),
    )


class MemoryRunStore:
    """`exo_otel.server.store.RunStore` beside the embedded database (one process: claims are plain sets).

    Notes are kept per run in the same form as the MongoDB store's documents (`apply_note` reads both).
    What the MongoDB store's indexes serve is kept indexed here too (the touched runs, the open runs by
    check key, the claims by run, the expiries), so a pass costs the same whatever the number of runs.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.runs: dict[str, dict[str, Any]] = {}
        self.notes: dict[str, dict[int, dict[str, Any]]] = {}
        self.claims: dict[str, set[str]] = {}  # run id: its claim keys
        self._claimed: set[str] = set()
        self._leases: dict[str, tuple[str, int]] = {}  # unconfirmed claim: (run id, lease end)
        self._touched: set[str] = set()  # ready, open and touched
        self._unready: dict[str, int] = {}  # run id: start (ns), of the runs whose trigger is in flight
        # The check keys of ready, open runs, sorted, and their run ids in the same order. The keys are
        # one contiguous array: a page's bisection reads a few cache lines of it, where a sorted list of
        # (key, run id) tuples had it read a tuple and an int scattered over the heap at every step (idle
        # passes find them out of cache: the bisection's cost grew with the number of open runs).
        self._open_keys = array("q")
        self._open_ids: list[str] = []
        self._expiries: list[tuple[int, str]] = []  # (expires_ns, run id) of closed runs, a heap
        self._note_ids = itertools.count()

    def _run_of(self, state_id: str) -> str | None:
        with self.db.lock:
            state = self.db.states.get(state_id)
        return None if state is None or state.run_id not in self.runs else state.run_id

    def _note(self, run_id: str, note: dict[str, Any]) -> int:
        note_id = next(self._note_ids)
        # Its `_id` names its run too, so marking notes seen goes to each note, not round every run's.
        record = {**note, "_id": (run_id, note_id), "run_id": run_id, "seen": False}
        self.notes.setdefault(run_id, {})[note_id] = record
        return note_id

    def _touch(self, run_id: str) -> None:
        entry = self.runs.get(run_id)
        if entry is not None and entry["ready"] and entry["open"]:
            self._touched.add(run_id)

    def _reopen(self, run_id: str) -> None:
        entry = self.runs[run_id]
        if entry["ready"] and not entry["open"]:
            self._add_open(run_id)
        entry.update(open=True, expires_ns=None)

    def _add_open(self, run_id: str) -> None:
        key = check_key(run_id)
        index = bisect.bisect_right(self._open_keys, key)
        self._open_keys.insert(index, key)
        self._open_ids.insert(index, run_id)

    def _drop_open(self, run_id: str) -> None:
        key = check_key(run_id)
        index = bisect.bisect_left(self._open_keys, key)
        while index < len(self._open_keys) and self._open_keys[index] == key:  # keys may collide
            if self._open_ids[index] == run_id:
                del self._open_keys[index]
                del self._open_ids[index]
                return
            index += 1

    async def ensure_indexes(self) -> None:
        return None  # dictionaries by run and by state: nothing to index

    async def save_run(self, run: RunContext) -> None:
        entry = {"run": run, "ready": False, "open": True, "expires_ns": None}
        self.runs[run.run_id] = entry
        self._unready[run.run_id] = run.start_ns

    async def mark_ready(self, run: RunContext) -> None:
        if run.run_id not in self.runs:
            await self.save_run(run)
        entry = self.runs[run.run_id]
        if not entry["ready"]:
            entry["ready"] = True
            self._unready.pop(run.run_id, None)
            self._add_open(run.run_id)
        self._touch(run.run_id)

    async def discard_run(self, run_id: str) -> None:
        entry = self.runs.get(run_id)
        if entry is not None and not entry["ready"]:
            del self.runs[run_id]
            self._unready.pop(run_id, None)
            self.notes.pop(run_id, None)

    async def stalled_triggers(self, started_before_ns: int, limit: int) -> list[RunContext]:
        stalled = sorted((start, run) for run, start in self._unready.items() if start < started_before_ns)
        return [self.runs[run_id]["run"] for _, run_id in stalled[:limit]]

    async def runs_with_states(self, run_ids: Sequence[str]) -> set[str]:
        with self.db.lock:
            return {run_id for run_id in run_ids if self.db.run_states.get(run_id)}

    async def load_runs(self, run_ids: Iterable[str]) -> dict[str, RunContext]:
        return {r: self.runs[r]["run"] for r in run_ids if r in self.runs}

    def states_taken(self, runs_by_state: Mapping[str, str]) -> None:
        pass  # a state's run is read from the embedded database itself, in memory

    async def begin_next_states(self, state_ids: Sequence[str]) -> object:
        run_id = self._run_of(state_ids[0])
        if run_id is None:
            return None
        note = {"kind": "next", "state_ids": list(state_ids), "t_start": time.time_ns(), "done": False}
        return (run_id, self._note(run_id, note))

    async def end_next_states(self, token: object, t_ns: int) -> None:
        if token is None:
            return
        run_id, note_id = cast(tuple[str, int], token)
        note = self.notes.get(run_id, {}).get(note_id)
        if note is not None:
            note.update(done=True, t_end=t_ns)
        self._touch(run_id)

    async def note_settled(self, state_id: str) -> None:
        run_id = self._run_of(state_id)
        if run_id is not None:
            self._note(run_id, {"kind": "settled", "state_ids": [state_id]})
            self._touch(run_id)

    async def note_requeue(self, state_id: str, t_ns: int, delay_ms: int) -> None:
        run_id = self._run_of(state_id)
        if run_id is not None:
            self._note(run_id, {"kind": "requeue", "state_id": state_id, "t": t_ns, "delay_ms": delay_ms})

    async def note_cost(self, state_id: str, cpu_seconds: float) -> object | None:
        run_id = self._run_of(state_id)
        if run_id is None:
            return None
        return (run_id, self._note(run_id, {"kind": "cost", "state_id": state_id, "cpu_s": cpu_seconds}))

    async def withdraw_note(self, token: object) -> None:
        run_id, note_id = cast(tuple[str, int], token)
        self.notes.get(run_id, {}).pop(note_id, None)

    async def note_retry(self, state_id: str, retried_state_id: str, run_id: str) -> bool:
        if run_id not in self.runs:
            return False
        self._reopen(run_id)
        self._note(run_id, {"kind": "retry", "state_id": state_id, "of": retried_state_id})
        self._touch(run_id)
        return True

    async def revive_run(self, run: RunContext) -> None:
        if run.run_id not in self.runs:
            await self.mark_ready(run)  # kept, ready and touched
            self._claim({f"outcome:{run.run_id}": run.run_id})

    async def touched_runs(self, limit: int) -> list[RunContext]:
        taken = list(itertools.islice(self._touched, limit))
        self._touched.difference_update(taken)
        if not self._touched:
            # A set keeps the table its largest size needed: iterating it, even empty, walks all of it
            # (after a burst of 10,000 triggers, every idle pass did). A new one is as small as it holds.
            self._touched = set()
        return [self.runs[run_id]["run"] for run_id in taken]

    async def open_runs_by_key(self, from_key: int, to_key: int, limit: int) -> list[RunContext]:
        first = bisect.bisect_left(self._open_keys, from_key)
        end = min(bisect.bisect_left(self._open_keys, to_key, first), first + limit)
        return [self.runs[run_id]["run"] for run_id in self._open_ids[first:end]]

    def _notes_of(self, run_ids: Sequence[str], unseen_only: bool) -> dict[str, RunNotes]:
        now = time.time_ns()
        notes = {run_id: RunNotes() for run_id in run_ids}
        for run_id in run_ids:
            for note in list(self.notes.get(run_id, {}).values()):
                if not (unseen_only and note["seen"] and note["kind"] in ("next", "settled")):
                    apply_note(note, notes[run_id], now)
        return notes

    async def run_changes(
        self, run_ids: Sequence[str]
    ) -> tuple[dict[str, list[StateRecord]], dict[str, RunNotes]]:
        notes = self._notes_of(run_ids, unseen_only=True)  # notes before states
        states: dict[str, list[StateRecord]] = {}
        with self.db.lock:
            for run_id in run_ids:
                run_notes = notes[run_id]
                # The states their spans link to: a copy's original, a manual retry's retried state.
                wanted = run_notes.changed | {*run_notes.copy_of.values(), *run_notes.retry_of.values()}
                found = [self.db.states[s] for s in wanted if s in self.db.states]
                earlier = [
                    other
                    for s in found
                    if s.retry_count > 0 and s.id not in run_notes.retry_of
                    for other in self.db.run_states.get(run_id, [])
                    if other.identifier == s.identifier and other.retry_count == s.retry_count - 1
                ]
                states[run_id] = [_record(s) for s in {s.id: s for s in [*found, *earlier]}.values()]
        return states, notes

    async def run_records(
        self, run_ids: Sequence[str]
    ) -> tuple[dict[str, list[StateRecord]], dict[str, RunNotes]]:
        notes = self._notes_of(run_ids, unseen_only=False)  # notes before states
        with self.db.lock:
            states = {r: [_record(s) for s in self.db.run_states.get(r, [])] for r in run_ids}
        return states, notes

    async def unsettled_runs(self, run_ids: Sequence[str]) -> set[str]:
        with self.db.lock:
            return {
                run_id
                for run_id in run_ids
                if any(s.status.value in PENDING_STATUSES for s in self.db.run_states.get(run_id, ()))
            }

    async def notes_seen(self, note_ids: Sequence[object]) -> None:
        for run_id, note_id in cast(Sequence[tuple[str, int]], note_ids):
            note = self.notes.get(run_id, {}).get(note_id)
            if note is not None:
                note["seen"] = True

    def _claim(self, runs_by_key: Mapping[str, str], lease_until_ns: int | None = None) -> set[str]:
        won = set(runs_by_key) - self._claimed
        self._claimed |= won
        if lease_until_ns is not None:
            self._leases.update((key, (runs_by_key[key], lease_until_ns)) for key in won)
        for key in won:
            self.claims.setdefault(runs_by_key[key], set()).add(key)
        return won

    async def claim_nodes(self, runs_by_state: Mapping[str, str], lease_until_ns: int) -> set[str]:
        by_key = {f"node:{state_id}": run_id for state_id, run_id in runs_by_state.items()}
        won = self._claim(by_key, lease_until_ns)
        return {key.removeprefix("node:") for key in won}

    async def claim_outcomes(self, run_ids: Sequence[str], lease_until_ns: int) -> set[str]:
        won = self._claim({f"outcome:{run_id}": run_id for run_id in run_ids}, lease_until_ns)
        return {key.removeprefix("outcome:") for key in won}

    async def claim_root(self, run_id: str, lease_until_ns: int, end_ns: int) -> bool:
        won = bool(self._claim({f"root:{run_id}": run_id}, lease_until_ns))
        if won and run_id in self.runs:
            self.runs[run_id]["root_end_ns"] = end_ns
        return won

    async def confirm_claims(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._leases.pop(key, None)

    async def renew_claims(self, keys: Sequence[str], lease_until_ns: int) -> None:
        for key in keys:
            if key in self._leases:
                self._leases[key] = (self._leases[key][0], lease_until_ns)

    async def take_over_stale(self, now_ns: int, lease_until_ns: int, limit: int) -> dict[str, StaleClaim]:
        stale = [key for key, (_run, until) in self._leases.items() if until < now_ns][:limit]
        taken = {}
        for key in stale:
            run_id = self._leases[key][0]
            self._leases[key] = (run_id, lease_until_ns)
            root_end = self.runs.get(run_id, {}).get("root_end_ns") if key.startswith("root:") else None
            taken[key] = StaleClaim(run_id, root_end)
        return taken

    async def unconfirmed_runs(self, run_ids: Sequence[str]) -> set[str]:
        wanted = set(run_ids)
        return {run_id for key, (run_id, _until) in self._leases.items()
                if run_id in wanted and not key.startswith("root:")}

    async def close_runs(self, run_ids: Sequence[str], expires_ns: int) -> None:
        for run_id in run_ids:
            entry = self.runs[run_id]
            if entry["open"] and entry["ready"]:
                self._drop_open(run_id)
            entry.update(open=False, expires_ns=expires_ns)
            self._touched.discard(run_id)
            heapq.heappush(self._expiries, (expires_ns, run_id))
            self.notes.pop(run_id, None)

    async def purge_expired(self, now_ns: int, limit: int) -> int:
        gone = 0
        while self._expiries and self._expiries[0][0] < now_ns and gone < limit:
            expires_ns, run_id = heapq.heappop(self._expiries)
            entry = self.runs.get(run_id)
            if entry is None or entry["open"] or entry["expires_ns"] != expires_ns:
                continue  # reopened since (a later close pushed its new expiry), or gone already
            del self.runs[run_id]
            self.notes.pop(run_id, None)
            gone_claims = self.claims.pop(run_id, set())
            self._claimed -= gone_claims
            for key in gone_claims:
                self._leases.pop(key, None)
            gone += 1
        return gone


class EmbeddedServerSide:
    """What the embedded handlers call; every entry point is guarded (it never fails a request)."""

    def __init__(
        self,
        db: Database,
        tracer_provider: trace.TracerProvider | None,
        meter_provider: metrics.MeterProvider | None,
    ) -> None:
        provider = tracer_provider or trace.get_tracer_provider()
        install_run_id_generator(provider)
        tracer = trace.get_tracer(__name__, __version__, provider, schema_url=attr.SCHEMA_URL)
        sampler = install_stored_decision(tracer)
        meter = metrics.get_meter(__name__, __version__, meter_provider, schema_url=attr.SCHEMA_URL)
        self.db = db
        self.side = ServerSide(
            tracer, MemoryRunStore(db), sampler, ServerMetrics.create(meter),
            retention_seconds=retention_seconds(), flush=functools.partial(flush_spans, provider),
        )

    async def triggered(
        self,
        answer: dict[str, Any],
        namespace: str,
        graph_name: str,
        start_ns: int,
        headers: Mapping[str, str],
    ) -> dict[str, Any]:
        """After a trigger: keep the run's context; the answer gains the run root's traceparent."""
        with guard("starting a run on the state manager side"):
            run = await self.side.run_starting(
                str(answer["run_id"]), namespace, graph_name, start_ns, headers
            )
            await self.side.run_started(run)
            return {**answer, **self.side.trigger_answer_extension(run)}
        return answer

    async def enqueued(self, answer: dict[str, Any], namespace: str) -> dict[str, Any]:
        """After an enqueue: each state gains its run, parents, retry count and the run's carrier."""
        with guard("extending an enqueue answer"):
            with self.db.lock:
                found = {s["state_id"]: self.db.states.get(s["state_id"]) for s in answer["states"]}
            taken = [
                TakenState(s.id, s.run_id, dict(s.parents), s.retry_count, epoch_ns(s.created_at))
                for s in found.values()
                if s is not None
            ]
            extensions = await self.side.states_taken(taken, namespace)
            states = [{**s, **extensions.get(s["state_id"], {})} for s in answer["states"]]
            return {**answer, "states": states}
        return answer

    def next_states_job(self, state_ids: list[str], job: Job) -> Any:
        """The executed job, holding its run open (not settled) until it has created the next states."""

        async def traced() -> None:
            token = None
            with guard("noting next states in progress"):
                token = await self.side.store.begin_next_states(state_ids)
            try:
                job()
            finally:
                if token is not None:
                    with guard("noting next states done"):
                        await self.side.store.end_next_states(token, time.time_ns())
                        self.side.sweeper.nudge()

        return traced

    async def reported(self, state_id: str, headers: Mapping[str, str]) -> None:
        """A runtime's report was accepted (executed, errored, pruned, requeued): its attempt's CPU time.
        Called before the handler's next await, as the report's own change is: nothing settles between."""
        with guard("noting a reported attempt's CPU time"):
            await self.side.attempt_reported(state_id, headers)

    async def requeued(self, state_id: str, delay_ms: int, t_ns: int) -> None:
        with guard("noting a requeue"):
            await self.side.store.note_requeue(state_id, t_ns, delay_ms)

    async def settled(self, state_id: str) -> None:
        """A state errored or was pruned."""
        with guard("noting a settled state"):
            await self.side.store.note_settled(state_id)
            self.side.sweeper.nudge()

    async def retried(self, answer: dict[str, Any], retried_state_id: str) -> None:
        """A manual retry: link the new state to the one it retries, reopen the run."""
        with guard("noting a manual retry"):
            new_id = str(answer.get("id", ""))
            with self.db.lock:
                state = self.db.states.get(new_id)
            if state is not None:
                await self.side.state_retried(
                    new_id, retried_state_id, state.run_id, state.namespace, state.graph_name,
                    epoch_ns(state.created_at) or time.time_ns(),
                )

    async def close(self) -> None:
        """A last sweep (runs that settled just now get their spans), then stop sweeping."""
        with guard("the last sweep"):
            await self.side.sweeper.sweep_once()
        self.side.sweeper.stop()
