"""`RunStore` in the upstream state manager's MongoDB: three collections of exo_otel's own beside the app's.

``exo_otel_runs``: one document per run (``_id`` = run id): its context, whether it is ready and open,
and, while it is open and ready, its ``check_key`` (the background check's order). Which runs a hook
touched since their last sweep is the process's own (in memory: the process that saw the change sweeps
it; a process that dies first leaves it to the background check), so a hook writes no touch.
``exo_otel_notes``: what the hooks saw, one document per event, with its run: next states being
created (then the states that settled), errored and pruned states, requeues, manual retries, the CPU
time of reported attempts. ``exo_otel_claims``: one document per emitted span (``_id`` =
``node:<state id>``, ``outcome:<run id>`` or ``root:<run id>``, with the run id); a claim is an insert,
atomic by the unique ``_id``, and a sweep pass claims all it needs in one unordered ``insert_many``,
whatever the number of runs. A closed run's document gets ``expires_ns``; past
it, the run and its claims are removed (`purge_expired`) unless a manual retry reopened the run.
Every query on them is served by an index `ensure_indexes` creates. The app's ``State`` collection
is only read, by ``_id`` or by its own ``run_id, status`` index.
"""

from __future__ import annotations

import importlib
import itertools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, cast

from exo_otel.core.lru import LruCache
from exo_otel.server.context import RunContext
from exo_otel.server.records import PENDING_STATUSES, RunNotes, StateRecord, apply_note
from exo_otel.server.store import StaleClaim, check_key

RUNS_COLLECTION: Final = "exo_otel_runs"
NOTES_COLLECTION: Final = "exo_otel_notes"
CLAIMS_COLLECTION: Final = "exo_otel_claims"
_DUPLICATE_KEY: Final = 11000
MAX_KNOWN_STATES: Final = 20_000  # state id -> run id kept from the runtimes' polls
MAX_TOUCHED: Final = 100_000  # runs touched and not swept yet, at most (past it: the background check)
CHECK_KEY_INDEX: Final = "exo_otel_check_key"
BACKFILL_PAGE: Final = 1000
# (collection, keys, name): every query below names its index in a comment.
INDEXES: Final = (
    (RUNS_COLLECTION, [("check_key", 1)], CHECK_KEY_INDEX),
    (RUNS_COLLECTION, [("expires_ns", 1)], "exo_otel_expiry"),
    (RUNS_COLLECTION, [("ready", 1), ("start_ns", 1)], "exo_otel_triggers"),
    (NOTES_COLLECTION, [("run_id", 1), ("seen", 1)], "exo_otel_notes_by_run"),
    (CLAIMS_COLLECTION, [("run_id", 1)], "exo_otel_claims_by_run"),
    (CLAIMS_COLLECTION, [("done", 1), ("lease_ns", 1)], "exo_otel_claim_leases"),
)
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
        self._indexed = False
        # The runs of states runtimes took from this process, for their reports (which mostly come
        # back to it): a read by _id saved per report. A state's entry goes when its attempt ends
        # (next states, settled or requeued: a requeued state is taken again), so the cache holds the
        # states in flight, not history; the oldest go first past the bound (taken, never reported).
        self._run_of_state: LruCache[str, str] = LruCache(MAX_KNOWN_STATES)
        self._touched: dict[str, None] = {}  # runs this process touched since their last sweep, in order

    def states_taken(self, runs_by_state: Mapping[str, str]) -> None:
        for state_id, run_id in runs_by_state.items():
            if run_id:
                self._run_of_state.put(state_id, run_id)

    def _states(self) -> Any:
        return self._state_collection()

    def _runs(self) -> Any:
        return self._states().database[RUNS_COLLECTION]

    def _notes(self) -> Any:
        return self._states().database[NOTES_COLLECTION]

    def _claims(self) -> Any:
        return self._states().database[CLAIMS_COLLECTION]

    async def ensure_indexes(self) -> None:
        """Create exo_otel's indexes (idempotent: every process does it once, at its first sweep).

        A database without the check-key index predates check keys: its open, ready runs get theirs
        first (`_backfill_check_keys`), then the index is made, so a process that dies meanwhile
        leaves the backfill to the next one."""
        if self._indexed:
            return
        database = self._states().database
        if CHECK_KEY_INDEX not in await self._runs().index_information():
            await self._backfill_check_keys()
        for collection, keys, name in INDEXES:
            await database[collection].create_index(keys, name=name)
        self._indexed = True

    async def _backfill_check_keys(self) -> None:
        """Give the open, ready runs that lack one their check key, a page at a time (once per database:
        on a fresh one this finds nothing). Each only if still open and keyless: a close meanwhile wins."""
        update_one = importlib.import_module("pymongo").UpdateOne  # the app's, not a dependency of ours
        keyless = {"open": True, "ready": True, "check_key": {"$exists": False}}
        while True:
            found = await self._runs().find(keyless, {"_id": 1}).limit(BACKFILL_PAGE).to_list(None)
            if found:
                keyed = [
                    update_one({"_id": run, **keyless}, {"$set": {"check_key": check_key(str(run))}})
                    for run in (doc["_id"] for doc in found)
                ]
                await self._runs().bulk_write(keyed, ordered=False)
            if len(found) < BACKFILL_PAGE:
                return

    async def save_run(self, run: RunContext) -> None:
        document = {"_id": run.run_id, **run.to_document(), "ready": False, "open": True}
        await self._runs().insert_one(document)

    async def mark_ready(self, run: RunContext) -> None:
        ready = {"ready": True, "check_key": check_key(run.run_id)}
        kept = {**run.to_document(), "open": True}  # only if discarded meanwhile (one atomic upsert)
        await self._runs().update_one({"_id": run.run_id}, {"$set": ready, "$setOnInsert": kept}, upsert=True)
        self._touch(run.run_id)

    async def discard_run(self, run_id: str) -> None:
        await self._runs().delete_one({"_id": run_id, "ready": False})

    async def stalled_triggers(self, started_before_ns: int, limit: int) -> list[RunContext]:
        # exo_otel_triggers: its equality prefix admits the runs whose trigger is in flight, no other.
        cursor = self._runs().find({"ready": False, "start_ns": {"$lt": started_before_ns}})
        found = await cursor.sort("start_ns", 1).limit(limit).to_list(None)
        return [RunContext.from_document(doc) for doc in found]

    async def runs_with_states(self, run_ids: Sequence[str]) -> set[str]:
        begun = set()
        for run_id in run_ids:  # the app's run_id_status_index, by its prefix: one probe per run
            if await self._states().find_one({"run_id": run_id}, {"_id": 1}) is not None:
                begun.add(run_id)
        return begun

    async def load_runs(self, run_ids: Iterable[str]) -> dict[str, RunContext]:
        wanted = sorted(set(run_ids))
        if not wanted:
            return {}
        found = await self._runs().find({"_id": {"$in": wanted}}).to_list(None)
        return {str(doc["_id"]): RunContext.from_document(doc) for doc in found}

    async def _run_of(self, state_id: str, attempt_ended: bool = False) -> str | None:
        known = self._run_of_state.pop(state_id) if attempt_ended else self._run_of_state.get(state_id)
        if known is not None:
            return known
        found = await self._states().find_one({"_id": _object_id(state_id)}, {"run_id": 1})
        if found is None:
            return None
        run_id = str(found.get("run_id"))
        if not attempt_ended:  # a report read here (its cost noted) ends its attempt here: read once
            self._run_of_state.put(state_id, run_id)
        return run_id

    def _touch(self, run_id: str) -> None:
        if run_id in self._touched or len(self._touched) < MAX_TOUCHED:  # past it: the background check
            self._touched[run_id] = None

    async def begin_next_states(self, state_ids: Sequence[str]) -> object:
        ids = [str(s) for s in state_ids]
        run_id = await self._run_of(ids[0], attempt_ended=True)
        note = {"kind": "next", "run_id": run_id, "state_ids": ids, "t_start": time.time_ns(), "done": False}
        result = await self._notes().insert_one({**note, "seen": False})
        return (result.inserted_id, run_id)

    async def end_next_states(self, token: object, t_ns: int) -> None:
        note_id, run_id = cast(tuple[Any, str | None], token)
        await self._notes().update_one({"_id": note_id}, {"$set": {"done": True, "t_end": t_ns}})
        if run_id is not None:
            self._touch(run_id)

    async def note_settled(self, state_id: str) -> None:
        run_id = await self._run_of(state_id, attempt_ended=True)
        if run_id is None:
            return
        note = {"kind": "settled", "run_id": run_id, "state_ids": [state_id], "seen": False}
        await self._notes().insert_one(note)
        self._touch(run_id)

    async def note_requeue(self, state_id: str, t_ns: int, delay_ms: int) -> None:
        run_id = await self._run_of(state_id, attempt_ended=True)
        if run_id is None:
            return
        await self._notes().insert_one(
            {"kind": "requeue", "run_id": run_id, "state_id": state_id, "t": t_ns, "delay_ms": delay_ms}
        )

    async def note_cost(self, state_id: str, cpu_seconds: float) -> object | None:
        run_id = await self._run_of(state_id)
        if run_id is None:
            return None
        note = {"kind": "cost", "run_id": run_id, "state_id": state_id, "cpu_s": cpu_seconds}
        inserted: object = (await self._notes().insert_one(note)).inserted_id
        return inserted

    async def withdraw_note(self, token: object) -> None:
        await self._notes().delete_one({"_id": token})

    async def note_retry(self, state_id: str, retried_state_id: str, run_id: str) -> bool:
        # Reopened first (its expiry cleared): a run purged already gets no note nothing would remove.
        reopened = await self._runs().update_one(
            {"_id": run_id}, {"$set": {"open": True}, "$unset": {"expires_ns": ""}}
        )
        if reopened.matched_count == 0:
            return False
        await self._notes().insert_one(
            {"kind": "retry", "run_id": run_id, "state_id": state_id, "of": retried_state_id}
        )
        # Checked again, and touched, if ready (a run whose trigger never completed is never swept).
        checked = {"$set": {"check_key": check_key(run_id)}}
        await self._runs().update_one({"_id": run_id, "ready": True}, checked)
        self._touch(run_id)
        return True

    async def revive_run(self, run: RunContext) -> None:
        document = {"_id": run.run_id, **run.to_document(), "ready": True, "open": True,
                    "check_key": check_key(run.run_id)}
        for collection, revived in ((self._runs(), document), (self._claims(), _outcome_claim(run.run_id))):
            try:
                await collection.insert_one(revived)
            except Exception as exc:  # pymongo's DuplicateKeyError: another process revived it first
                if getattr(exc, "code", None) != _DUPLICATE_KEY:
                    raise

    async def touched_runs(self, limit: int) -> list[RunContext]:
        taken = list(itertools.islice(self._touched, limit))
        if not taken:
            return []
        for run_id in taken:
            del self._touched[run_id]
        try:  # by `_id`; a run not ready yet is touched again when it is (`mark_ready`)
            cursor = self._runs().find({"_id": {"$in": taken}, "open": True, "ready": True})
            found = await cursor.to_list(None)
        except BaseException:
            self._touched.update(dict.fromkeys(taken))  # still to sweep
            raise
        return [RunContext.from_document(doc) for doc in found]

    async def open_runs_by_key(self, from_key: int, to_key: int, limit: int) -> list[RunContext]:
        # exo_otel_check_key: both bounds on the one field, so the index admits this window's runs alone.
        cursor = self._runs().find({"check_key": {"$gte": from_key, "$lt": to_key}})
        found = await cursor.sort("check_key", 1).limit(limit).to_list(None)
        return [RunContext.from_document(doc) for doc in found]

    async def run_changes(
        self, run_ids: Sequence[str]
    ) -> tuple[dict[str, list[StateRecord]], dict[str, RunNotes]]:
        # Notes first, states after (see RunStore.run_changes). Requeue and retry notes are few and
        # kept in every read; next-states and settled notes only until seen. exo_otel_notes_by_run.
        raw_notes = await self._notes().find(
            {"run_id": {"$in": list(run_ids)}, "seen": {"$ne": True}}
        ).to_list(None)
        notes = _notes_by_run(raw_notes, run_ids, time.time_ns())
        wanted = {s for run_notes in notes.values() for s in run_notes.changed}
        wanted |= {o for run_notes in notes.values() for o in run_notes.copy_of.values()}
        # A manual retry's retried state, for its link (retry notes are kept in every read).
        wanted |= {o for run_notes in notes.values() for o in run_notes.retry_of.values()}
        found = await self._read_states({"_id": {"$in": [_object_id(s) for s in wanted]}}) if wanted else []
        # A retry's previous attempt, for its link (retries are few: one query for all of them).
        attempts = [
            {"run_id": s.run_id, "identifier": s.identifier, "retry_count": s.retry_count - 1}
            for s in found
            if s.retry_count > 0 and s.state_id not in notes[s.run_id].retry_of
        ]
        if attempts:
            found += await self._read_states({"$or": attempts})
        states: dict[str, list[StateRecord]] = {run_id: [] for run_id in run_ids}
        for record in {r.state_id: r for r in found}.values():
            states.setdefault(record.run_id, []).append(record)
        return states, notes

    async def run_records(
        self, run_ids: Sequence[str]
    ) -> tuple[dict[str, list[StateRecord]], dict[str, RunNotes]]:
        raw_notes = await self._notes().find({"run_id": {"$in": list(run_ids)}}).to_list(None)
        notes = _notes_by_run(raw_notes, run_ids, time.time_ns())
        # The app's run_id_status_index serves this.
        found = await self._read_states({"run_id": {"$in": list(run_ids)}})
        states: dict[str, list[StateRecord]] = {run_id: [] for run_id in run_ids}
        for record in found:
            states.setdefault(record.run_id, []).append(record)
        return states, notes

    async def _read_states(self, query: dict[str, Any]) -> list[StateRecord]:
        found = await self._states().find(query, _STATE_FIELDS).to_list(None)
        return [StateRecord.from_document(document) for document in found]

    async def unsettled_runs(self, run_ids: Sequence[str]) -> set[str]:
        unsettled = set()
        for run_id in run_ids:  # the app's run_id_status_index: one index probe per run
            pending = await self._states().find_one(
                {"run_id": run_id, "status": {"$in": sorted(PENDING_STATUSES)}}, {"_id": 1}
            )
            if pending is not None:
                unsettled.add(run_id)
        return unsettled

    async def notes_seen(self, note_ids: Sequence[object]) -> None:
        if note_ids:
            await self._notes().update_many({"_id": {"$in": list(note_ids)}}, {"$set": {"seen": True}})

    async def _claim(
        self, runs_by_key: dict[str, str], lease_until_ns: int, kept: Mapping[str, Any] | None = None
    ) -> set[str]:
        """Insert these claims (``kept``: fields each one keeps for whoever takes it over); the keys won."""
        keys = list(runs_by_key)
        if not keys:
            return set()
        try:
            documents = [
                {"_id": key, "run_id": run_id, "done": False, "lease_ns": lease_until_ns, **(kept or {})}
                for key, run_id in runs_by_key.items()
            ]
            await self._claims().insert_many(documents, ordered=False)
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

    async def claim_nodes(self, runs_by_state: Mapping[str, str], lease_until_ns: int) -> set[str]:
        by_key = {f"node:{state_id}": run_id for state_id, run_id in runs_by_state.items()}
        won = await self._claim(by_key, lease_until_ns)
        return {key.removeprefix("node:") for key in won}

    async def claim_outcomes(self, run_ids: Sequence[str], lease_until_ns: int) -> set[str]:
        claims = [_outcome_claim(run_id) for run_id in run_ids]
        won = await self._claim({claim["_id"]: claim["run_id"] for claim in claims}, lease_until_ns)
        return {key.removeprefix("outcome:") for key in won}

    async def claim_root(self, run_id: str, lease_until_ns: int, end_ns: int) -> bool:
        return bool(await self._claim({f"root:{run_id}": run_id}, lease_until_ns, {"end_ns": end_ns}))

    async def confirm_claims(self, keys: Sequence[str]) -> None:
        if keys:
            await self._claims().update_many(
                {"_id": {"$in": list(keys)}}, {"$set": {"done": True}, "$unset": {"lease_ns": ""}}
            )

    async def renew_claims(self, keys: Sequence[str], lease_until_ns: int) -> None:
        if keys:
            # By `_id` alone (a filter SecantusDB's planner serves by the index; with `done` beside the
            # `$in` it scans the collection): a lease on a claim already final is never read, since
            # the take-over and unconfirmed_runs only match claims with `done: false`.
            await self._claims().update_many(
                {"_id": {"$in": list(keys)}}, {"$set": {"lease_ns": lease_until_ns}}
            )

    async def take_over_stale(self, now_ns: int, lease_until_ns: int, limit: int) -> dict[str, StaleClaim]:
        # exo_otel_claim_leases. Claims made before leases existed have no `done`: final, never matched.
        stale = await self._claims().find(
            {"done": False, "lease_ns": {"$lt": now_ns}}, {"run_id": 1, "lease_ns": 1, "end_ns": 1}
        ).limit(limit).to_list(None)
        taken: dict[str, StaleClaim] = {}
        for claim in stale:
            # Only if no other process took it over since the find: one winner per lease.
            moved = await self._claims().update_one(
                {"_id": claim["_id"], "done": False, "lease_ns": claim["lease_ns"]},
                {"$set": {"lease_ns": lease_until_ns}},
            )
            if moved.modified_count == 1:
                taken[str(claim["_id"])] = StaleClaim(str(claim.get("run_id")), claim.get("end_ns"))
        return taken

    async def unconfirmed_runs(self, run_ids: Sequence[str]) -> set[str]:
        ids = list(run_ids)
        if not ids:
            return set()
        # exo_otel_claims_by_run, by `run_id` alone: with `done` beside the `$in` SecantusDB's planner
        # scans the collection, every claim ever retained. The runs' claims are read (one per state)
        # and the final ones left here. Claims made before leases existed have no `done`: final.
        found = await self._claims().find({"run_id": {"$in": ids}}, {"run_id": 1, "done": 1}).to_list(None)
        return {
            str(doc.get("run_id")) for doc in found
            if doc.get("done") is False and not str(doc["_id"]).startswith("root:")
        }

    async def close_runs(self, run_ids: Sequence[str], expires_ns: int) -> None:
        ids = list(run_ids)
        await self._runs().update_many(
            {"_id": {"$in": ids}},
            {"$set": {"open": False, "expires_ns": expires_ns}, "$unset": {"check_key": 1}},
        )
        await self._notes().delete_many({"run_id": {"$in": ids}})

    async def purge_expired(self, now_ns: int, limit: int) -> int:
        # exo_otel_expiry, bounded on both sides (open runs have no expiry: a one-sided bound may admit
        # them, as missing, on some databases). Runs first, each only if still expired (a retry may
        # have reopened it since the find); then the claims and notes of those that went
        # (exo_otel_claims_by_run, exo_otel_notes_by_run), never of a run still there.
        expired = {"expires_ns": {"$gte": 0, "$lt": now_ns}}
        found = await self._runs().find(expired, {"_id": 1}).limit(limit).to_list(None)
        ids = [doc["_id"] for doc in found]
        if not ids:
            return 0
        await self._runs().delete_many({"_id": {"$in": ids}, **expired})
        still = await self._runs().find({"_id": {"$in": ids}}, {"_id": 1}).to_list(None)
        kept = {doc["_id"] for doc in still}
        gone = [run_id for run_id in ids if run_id not in kept]
        if gone:
            await self._claims().delete_many({"run_id": {"$in": gone}})
            await self._notes().delete_many({"run_id": {"$in": gone}})
        return len(gone)


def _outcome_claim(run_id: str) -> dict[str, Any]:
    return {"_id": f"outcome:{run_id}", "run_id": run_id}


def _object_id(value: str) -> Any:
    bson = importlib.import_module("bson")  # the app's (pymongo's), not a dependency of ours
    return bson.ObjectId(value) if bson.ObjectId.is_valid(value) else value


def _notes_by_run(raw_notes: list[dict[str, Any]], run_ids: Sequence[str], now: int) -> dict[str, RunNotes]:
    notes = {run_id: RunNotes() for run_id in run_ids}
    for note in raw_notes:
        run_notes = notes.get(str(note.get("run_id")))
        if run_notes is not None:
            apply_note(note, run_notes, now)
    return notes
