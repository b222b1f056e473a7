"""Every State's status history, recorded after each write to the states collection (in the server venv).

Upstream keeps only a state's current status; the conformance tests compare whole histories. After
every write call on the State collection the recorder appends each status change, with the wall-clock
time, of the states the write touched: taken from the documents the call itself holds (inserted ones,
the one a find-and-update returns), then read back by id; a write whose filter names no id reads every
state. It wraps the write methods of the collection's class (whatever database client the app uses),
for that one collection only; large loads switch it off.
"""

from __future__ import annotations

import functools
import time
from typing import Any

WRITES = ("insert_one", "insert_many", "update_one", "update_many", "replace_one", "find_one_and_update",
          "find_one_and_replace", "bulk_write", "delete_one", "delete_many")


class StatusHistory:
    """Status changes per state id, in order, with epoch milliseconds."""

    def __init__(self) -> None:
        self._states: dict[str, dict[str, Any]] = {}
        self._collection_name: str | None = None

    def attach(self, collection: Any) -> None:
        """Record the writes on ``collection`` (the app's State collection, after beanie's init)."""
        self._collection_name = collection.name
        cls = type(collection)
        for name in WRITES:
            original = getattr(cls, name, None)
            if original is not None and not getattr(original, "_harness_tap", False):
                setattr(cls, name, self._tapped(original))

    def _tapped(self, original: Any) -> Any:
        @functools.wraps(original)
        async def write(collection: Any, *args: Any, **kwargs: Any) -> Any:
            result = await original(collection, *args, **kwargs)
            if collection.name == self._collection_name:
                await self._after(original.__name__, collection, args, kwargs, result)
            return result

        write._harness_tap = True  # type: ignore[attr-defined]
        return write

    async def _after(self, write: str, collection: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                     result: Any) -> None:
        """Record what ``write`` changed: from the documents at hand first (before any await, since a
        write running meanwhile could change them again), then by reading back the states it touched,
        or every state when its filter does not name them by id."""
        now = time.time()
        if write in ("insert_one", "insert_many") and args:
            docs = [args[0]] if write == "insert_one" else list(args[0])
            ids = [getattr(result, "inserted_id", None)] if write == "insert_one" else list(
                getattr(result, "inserted_ids", None) or [None] * len(docs))
            for doc, inserted_id in zip(docs, ids, strict=False):
                if isinstance(doc, dict):
                    self._note({"_id": inserted_id, **doc}, now)
            return
        if write.startswith("find_one_and_"):
            if kwargs.get("return_document"):  # ReturnDocument.AFTER: the document as written
                self._note(result, now)
            if isinstance(result, dict) and "_id" in result:
                await self._read(collection, {"_id": result["_id"]})
            return
        query = args[0] if args else kwargs.get("filter")
        if write != "bulk_write" and isinstance(query, dict) and "_id" in query:
            await self._read(collection, {"_id": query["_id"]})
        else:
            await self._read(collection, {})

    async def _read(self, collection: Any, query: dict[str, Any]) -> None:
        now = time.time()
        projection = {"status": 1, "run_id": 1, "identifier": 1, "node_name": 1}
        async for doc in collection.find(query, projection):
            self._note(doc, now)

    def _note(self, doc: Any, now: float) -> None:
        if not isinstance(doc, dict) or doc.get("_id") is None:
            return
        key = str(doc["_id"])
        status = doc.get("status")
        status = str(getattr(status, "value", status))  # an inserted document may hold the enum itself
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = {"state_id": key, "run_id": doc.get("run_id"),
                                         "identifier": doc.get("identifier"),
                                         "node_name": doc.get("node_name"), "history": []}
        history = state["history"]
        if not history or history[-1]["status"] != status:
            history.append({"t_ms": int(now * 1000), "status": status})

    def states(self, run_id: str | None) -> list[dict[str, Any]]:
        """The recorded states of ``run_id`` (every run's if None), in the order they were first seen."""
        return [s for s in self._states.values() if run_id is None or s["run_id"] == run_id]
