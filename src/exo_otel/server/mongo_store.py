"""`RunStore` in the upstream state manager's MongoDB: two collections of exo_otel's own beside the app's.

``exo_otel_runs``: one document per run (``_id`` = run id): its context, whether it is ready and
open, when each state was first taken. ``exo_otel_notes``: next-states-in-progress tokens, requeues
and manual retries. ``exo_otel_claims``: one document per emitted span (``_id`` = ``node:<state id>``
or ``root:<run id>``); a claim is an insert, atomic by the unique ``_id``, and a sweep pass claims
all it needs in one unordered ``insert_many``, whatever the number of runs.
The app's ``State`` collection is only read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

from exo_otel.server.context import RunContext
from exo_otel.server.records import RunNotes, StateRecord

RUNS_COLLECTION: Final = "exo_otel_runs"
NOTES_COLLECTION: Final = "exo_otel_notes"
CLAIMS_COLLECTION: Final = "exo_otel_claims"
_DUPLICATE_KEY: Final = 11000
# A next-states token older than this is from a process that died mid-way: it no longer holds a run open.
STALE_TOKEN_NS: Final = 120 * 1_000_000_000
_STATE_FIELDS: Final = {
    "run_id": 1,
    "identifier": 1,
    "node_name": 1,
    "status": 1,
    "created_at": 1,
    "updated_at": 1,
    "enqueue_after": 1,
    "retry_count": 1,
    "fanout_id": 1,
    "parents": 1,
}


class MongoRunStore:
    """The store over the app's database; ``state_collection`` gives the app's State collection."""

    def __init__(self, state_collection: Callable[[], Any]) -> None:
        self._state_collection = state_collection

    def _states(self) -> Any:
        return self._state_collection()

    def _runs(self) -> Any:
        return self._states().database[RUNS_COLLECTION]

    def _notes(self) -> Any:
        return self._states().database[NOTES_COLLECTION]

    async def save_run(self, run: RunContext) -> None:
        document = {
            "_id": run.run_id,
            **run.to_document(),
            "ready": False,
            "open": True,
        }
        await self._runs().insert_one(document)

    async def mark_ready(self, run_id: str) -> None:
        await self._runs().update_one({"_id": run_id}, {"$set": {"ready": True}})

    async def discard_run(self, run_id: str) -> None:
        await self._runs().delete_one({"_id": run_id})

    async def load_runs(self, run_ids: Iterable[str]) -> dict[str, RunContext]:
        wanted = sorted(set(run_ids))
        if not wanted:
            return {}
        found = await self._runs().find({"_id": {"$in": wanted}}).to_list(None)
        return {str(doc["_id"]): RunContext.from_document(doc) for doc in found}

    async def begin_next_states(self, state_ids: Sequence[str]) -> object:
        result = await self._notes().insert_one(
            {
                "kind": "next",
                "state_ids": [str(s) for s in state_ids],
                "t_start": time.time_ns(),
                "done": False,
            }
        )
        return result.inserted_id

    async def end_next_states(self, token: object, t_ns: int) -> None:
        await self._notes().update_one({"_id": token}, {"$set": {"done": True, "t_end": t_ns}})

    async def note_requeue(self, state_id: str, t_ns: int, delay_ms: int) -> None:
        await self._notes().insert_one(
            {"kind": "requeue", "state_id": state_id, "t": t_ns, "delay_ms": delay_ms}
        )

    async def note_retry(self, state_id: str, retried_state_id: str, run_id: str) -> None:
        await self._notes().insert_one({"kind": "retry", "state_id": state_id, "of": retried_state_id})
        await self._runs().update_one({"_id": run_id}, {"$set": {"open": True}})

    async def open_runs(self, limit: int) -> list[RunContext]:
        cursor = self._runs().find({"ready": True, "open": True})
        found = await cursor.sort("start_ns", 1).limit(limit).to_list(None)
        return [RunContext.from_document(doc) for doc in found]

    async def run_records(
        self, run_ids: Sequence[str]
    ) -> tuple[dict[str, list[StateRecord]], dict[str, RunNotes]]:
        # Notes first, states after (see RunStore.run_records).
        raw_notes = await self._notes().find({}).to_list(None)
        found = await self._states().find({"run_id": {"$in": list(run_ids)}}, _STATE_FIELDS).to_list(None)
        states: dict[str, list[StateRecord]] = {run_id: [] for run_id in run_ids}
        for document in found:
            record = StateRecord.from_document(document)
            states.setdefault(record.run_id, []).append(record)
        run_of = {state.state_id: run_id for run_id, records in states.items() for state in records}
        notes = {run_id: RunNotes() for run_id in states}
        now = time.time_ns()
        for note in raw_notes:
            _apply_note(note, run_of, notes, now)
        return states, notes

    def _claims(self) -> Any:
        return self._states().database[CLAIMS_COLLECTION]

    async def _claim(self, keys: list[str]) -> set[str]:
        if not keys:
            return set()
        try:
            await self._claims().insert_many([{"_id": key} for key in keys], ordered=False)
        except Exception as exc:  # pymongo's BulkWriteError (pymongo is the app's, not ours)
            details = getattr(exc, "details", None)
            if not isinstance(details, dict):
                raise
            errors = details.get("writeErrors", [])
            if any(error.get("code") != _DUPLICATE_KEY for error in errors):
                raise
            lost = {int(error["index"]) for error in errors}
            return {key for index, key in enumerate(keys) if index not in lost}
        return set(keys)

    async def claim_nodes(self, state_ids: Sequence[str]) -> set[str]:
        won = await self._claim([f"node:{state_id}" for state_id in state_ids])
        return {key.removeprefix("node:") for key in won}

    async def claim_outcomes(self, run_ids: Sequence[str]) -> set[str]:
        won = await self._claim([f"outcome:{run_id}" for run_id in run_ids])
        return {key.removeprefix("outcome:") for key in won}

    async def close_runs(self, run_ids: Sequence[str], state_ids: Sequence[str]) -> None:
        await self._runs().update_many({"_id": {"$in": list(run_ids)}}, {"$set": {"open": False}})
        ids = list(state_ids)
        await self._notes().delete_many({"$or": [{"state_ids.0": {"$in": ids}}, {"state_id": {"$in": ids}}]})


def _apply_note(note: dict[str, Any], run_of: dict[str, str], notes: dict[str, RunNotes], now: int) -> None:
    kind = note.get("kind")
    if kind == "next":
        ids = [str(s) for s in note.get("state_ids") or ()]
        run_id = next((run_of[s] for s in ids if s in run_of), None)
        if run_id is None:
            return
        run_notes = notes[run_id]
        if not note.get("done"):
            if now - int(note.get("t_start") or 0) < STALE_TOKEN_NS:
                run_notes.next_states_pending = True
            return
        for copy in ids[1:]:
            run_notes.copy_of[copy] = ids[0]
            run_notes.final_ns[copy] = int(note.get("t_end") or now)
    elif kind == "requeue":
        state_id = str(note.get("state_id"))
        if state_id in run_of:
            notes[run_of[state_id]].requeues.setdefault(state_id, []).append(
                (int(note.get("t") or now), int(note.get("delay_ms") or 0))
            )
    elif kind == "retry":
        state_id = str(note.get("state_id"))
        if state_id in run_of:
            notes[run_of[state_id]].retry_of[state_id] = str(note.get("of"))
