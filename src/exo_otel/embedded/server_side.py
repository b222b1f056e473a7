"""The embedded state manager's adapter to the state manager side (`exo_otel.server`).

With ``EmbeddedStateManager(server_side=True)`` the embedded server serves the same enqueue and
trigger extensions and emits the same ``run`` and ``node`` spans as the real state manager with
the side loaded, through the same core: only the store differs (in memory: the embedded server is
one process). The handlers call `EmbeddedServerSide` at the same moments the upstream patches do.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from opentelemetry import metrics, trace

from exo_otel.core.providers import install_run_id_generator
from exo_otel.core.spans import guard
from exo_otel.embedded.models import State, StateStatus
from exo_otel.embedded.operations import Job
from exo_otel.embedded.store import Database
from exo_otel.server.context import RunContext
from exo_otel.server.records import RunNotes, StateRecord, epoch_ns
from exo_otel.server.sampling import install_stored_decision
from exo_otel.server.side import ServerSide, TakenState
from exo_otel.server.spans import ServerMetrics
from exo_otel.version import __version__

_STALE_NS = 120 * 1_000_000_000


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
    """`exo_otel.server.store.RunStore` beside the embedded database (one process: claims are plain sets)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.runs: dict[str, dict[str, Any]] = {}
        self.next_tokens: dict[str, dict[str, Any]] = {}
        self.requeues: dict[str, list[tuple[int, int]]] = {}
        self.claims: set[str] = set()

    async def save_run(self, run: RunContext) -> None:
        self.runs[run.run_id] = {"run": run, "ready": False, "open": True}

    async def mark_ready(self, run_id: str) -> None:
        self.runs[run_id]["ready"] = True

    async def discard_run(self, run_id: str) -> None:
        self.runs.pop(run_id, None)

    async def load_runs(self, run_ids: Iterable[str]) -> dict[str, RunContext]:
        return {r: self.runs[r]["run"] for r in run_ids if r in self.runs}

    async def begin_next_states(self, state_ids: Sequence[str]) -> object:
        token = uuid.uuid4().hex
        self.next_tokens[token] = {"ids": list(state_ids), "t_start": time.time_ns(), "t_end": None}
        return token

    async def end_next_states(self, token: object, t_ns: int) -> None:
        self.next_tokens[str(token)]["t_end"] = t_ns

    async def note_requeue(self, state_id: str, t_ns: int, delay_ms: int) -> None:
        self.requeues.setdefault(state_id, []).append((t_ns, delay_ms))

    async def note_retry(self, state_id: str, retried_state_id: str, run_id: str) -> None:
        return None  # the embedded server has no manual retry

    async def open_runs(self, limit: int) -> list[RunContext]:
        open_runs = [entry["run"] for entry in self.runs.values() if entry["ready"] and entry["open"]]
        return sorted(open_runs, key=lambda run: run.start_ns)[:limit]

    async def run_records(
        self, run_ids: Sequence[str]
    ) -> tuple[dict[str, list[StateRecord]], dict[str, RunNotes]]:
        tokens = [dict(token) for token in self.next_tokens.values()]  # notes before states
        with self.db.lock:
            states = {r: [_record(s) for s in self.db.run_states.get(r, [])] for r in run_ids}
        run_of = {s.state_id: r for r, records in states.items() for s in records}
        notes: dict[str, RunNotes] = {run_id: RunNotes() for run_id in run_ids}
        now = time.time_ns()
        for token in tokens:
            owner = next((run_of[s] for s in token["ids"] if s in run_of), None)
            if owner is None:
                continue
            if token["t_end"] is None:
                notes[owner].next_states_pending |= now - token["t_start"] < _STALE_NS
                continue
            for copy in token["ids"][1:]:
                notes[owner].copy_of[copy] = token["ids"][0]
                notes[owner].final_ns[copy] = token["t_end"]
        for state_id, events in self.requeues.items():
            if state_id in run_of:
                notes[run_of[state_id]].requeues[state_id] = list(events)
        return states, notes

    async def claim_nodes(self, state_ids: Sequence[str]) -> set[str]:
        won = {f"node:{s}" for s in state_ids} - self.claims
        self.claims |= won
        return {key.removeprefix("node:") for key in won}

    async def claim_outcomes(self, run_ids: Sequence[str]) -> set[str]:
        won = {f"outcome:{r}" for r in run_ids} - self.claims
        self.claims |= won
        return {key.removeprefix("outcome:") for key in won}

    async def close_runs(self, run_ids: Sequence[str], state_ids: Sequence[str]) -> None:
        for run_id in run_ids:
            self.runs[run_id]["open"] = False
        ids = set(state_ids)
        for token, value in list(self.next_tokens.items()):
            if value["ids"] and value["ids"][0] in ids:
                del self.next_tokens[token]
        for state_id in ids:
            self.requeues.pop(state_id, None)


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
        tracer = trace.get_tracer(__name__, __version__, provider)
        sampler = install_stored_decision(tracer)
        meter = metrics.get_meter(__name__, __version__, meter_provider)
        self.db = db
        self.side = ServerSide(tracer, MemoryRunStore(db), sampler, ServerMetrics.create(meter))

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

    async def requeued(self, state_id: str, delay_ms: int, t_ns: int) -> None:
        with guard("noting a requeue"):
            await self.side.store.note_requeue(state_id, t_ns, delay_ms)

    async def close(self) -> None:
        """A last sweep (runs that settled just now get their spans), then stop sweeping."""
        with guard("the last sweep"):
            await self.side.sweeper.sweep_once()
        self.side.sweeper.stop()
