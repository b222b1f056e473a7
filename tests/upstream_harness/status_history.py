"""Every State's status history, recorded after each write to the states collection (in the server venv).

Upstream keeps only a state's current status; the conformance tests compare whole histories. After
every write call on the State collection the recorder reads the statuses of the states the harness has
not seen settle and appends each change with the wall-clock time. It wraps the write methods of the
collection's class (whatever database client the app uses), for that one collection only; a read per
write, so large loads switch it off.
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
                await self._record(collection)
            return result

        write._harness_tap = True  # type: ignore[attr-defined]
        return write

    async def _record(self, collection: Any) -> None:
        now_ms = int(time.time() * 1000)
        projection = {"status": 1, "run_id": 1, "identifier": 1, "node_name": 1}
        async for doc in collection.find({}, projection):
            key = str(doc["_id"])
            status = str(doc.get("status"))
            state = self._states.get(key)
            if state is None:
                state = self._states[key] = {"state_id": key, "run_id": doc.get("run_id"),
                                             "identifier": doc.get("identifier"),
                                             "node_name": doc.get("node_name"), "history": []}
            history = state["history"]
            if not history or history[-1]["status"] != status:
                history.append({"t_ms": now_ms, "status": status})

    def states(self, run_id: str | None) -> list[dict[str, Any]]:
        """The recorded states of ``run_id`` (every run's if None), in the order they were first seen."""
        return [s for s in self._states.values() if run_id is None or s["run_id"] == run_id]
