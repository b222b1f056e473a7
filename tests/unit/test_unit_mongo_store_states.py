"""`MongoRunStore`'s runs of taken states: kept for a state's report, gone once its attempt ended.

The store is driven over small in-memory stand-ins for pymongo's async collections (this venv has no
pymongo): they keep the documents written, so the notes' run ids can be checked, and count the reads
of the app's State collection, which are what the cache saves (a read by id needs bson, which this
venv lacks: every report here finds its state's run in the cache).
"""

from __future__ import annotations

import itertools
from typing import Any

from exo_otel.server.mongo_store import NOTES_COLLECTION, MongoRunStore

RUN_A = "9d2c6f0e-3b1a-4c5d-8e7f-00112233aaaa"
RUN_B = "9d2c6f0e-3b1a-4c5d-8e7f-00112233bbbb"


class _Inserted:
    def __init__(self, inserted_id: int) -> None:
        self.inserted_id = inserted_id


class _Collection:
    def __init__(self, database: _Database) -> None:
        self.database = database
        self.documents: list[dict[str, Any]] = []
        self.reads = 0

    async def insert_one(self, document: dict[str, Any]) -> _Inserted:
        inserted = _Inserted(next(self.database.ids))
        self.documents.append({"_id": inserted.inserted_id, **document})
        return inserted

    async def update_one(self, query: dict[str, Any], update: dict[str, Any]) -> None:
        return None

    async def find_one(self, query: dict[str, Any], projection: dict[str, Any]) -> dict[str, Any] | None:
        self.reads += 1
        return None


class _Database(dict[str, _Collection]):
    def __init__(self) -> None:
        super().__init__()
        self.ids = itertools.count(1)

    def __missing__(self, name: str) -> _Collection:
        self[name] = collection = _Collection(self)
        return collection


def _store() -> tuple[MongoRunStore, _Database]:
    database = _Database()
    states = database["State"]
    return MongoRunStore(lambda: states), database


async def test_a_taken_states_run_serves_its_report_and_goes_when_the_attempt_ends() -> None:
    store, database = _store()
    store.states_taken({"s-next": RUN_A, "s-error": RUN_B, "s-requeue": RUN_A, "s-running": RUN_B})

    assert await store.note_cost("s-next", 0.5) is not None  # the report's CPU time: the entry stays
    await store.begin_next_states(["s-next", "s-copy"])
    await store.note_settled("s-error")
    await store.note_requeue("s-requeue", 1, 10)

    notes = database[NOTES_COLLECTION].documents
    assert [(n["kind"], n["run_id"]) for n in notes] == [
        ("cost", RUN_A), ("next", RUN_A), ("settled", RUN_B), ("requeue", RUN_A)
    ]
    assert database["State"].reads == 0  # every run came from the cache
    assert list(store._run_of_state) == ["s-running"]  # only the state still in flight is kept

    # A requeued state taken again is kept again, for its next report.
    store.states_taken({"s-requeue": RUN_A})
    await store.begin_next_states(["s-requeue"])
    assert notes[-1]["run_id"] == RUN_A and database["State"].reads == 0
    assert list(store._run_of_state) == ["s-running"]
