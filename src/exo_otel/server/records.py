"""What the state manager side reads back about a run: its states and the notes the hooks left.

Storage-agnostic: the upstream adapter fills these from MongoDB, the embedded one from its store.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

# Upstream's state statuses: a run is settled when none of its states is pending.
PENDING_STATUSES: Final = frozenset({"CREATED", "QUEUED", "EXECUTED"})
ERRORED_STATUSES: Final = frozenset({"ERRORED", "NEXT_CREATED_ERROR"})
# A next-states note not done after this is from a process that died mid-way: it no longer holds a run open.
STALE_TOKEN_NS: Final = 120 * 1_000_000_000
OUTCOME_BY_STATUS: Final = {
    "SUCCESS": "executed",
    "PRUNED": "pruned",
    "ERRORED": "errored",
    "RETRY_CREATED": "errored",
    "NEXT_CREATED_ERROR": "errored",
}


def epoch_ns(value: object) -> int | None:
    """Epoch nanoseconds of a stored timestamp.

    Upstream writes ``datetime.now()``: naive, the server's local time. This runs in the server, so a
    naive value is read as local time (which is UTC in the usual container).
    """
    if isinstance(value, dt.datetime):
        return int(value.timestamp() * 1_000_000_000)
    if isinstance(value, int | float):
        return int(value)
    return None


@dataclass(frozen=True)
class StateRecord:
    """One state of a run as stored: enough to place, time and link its node span."""

    state_id: str
    run_id: str
    identifier: str
    node_name: str
    status: str
    created_ns: int
    updated_ns: int
    enqueue_after_ms: int | None = None
    retry_count: int = 0
    fanout_id: str = ""
    parent_ids: tuple[str, ...] = ()

    @property
    def settled(self) -> bool:
        return self.status not in PENDING_STATUSES

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> StateRecord:
        created = epoch_ns(document.get("created_at")) or 0
        parents = document.get("parents")
        status = document.get("status")
        return cls(
            state_id=str(document.get("_id", document.get("id", ""))),
            run_id=str(document.get("run_id", "")),
            identifier=str(document.get("identifier", "")),
            node_name=str(document.get("node_name", "")),
            status=str(getattr(status, "value", status)),
            created_ns=created,
            updated_ns=epoch_ns(document.get("updated_at")) or created,
            enqueue_after_ms=document.get("enqueue_after")
            if isinstance(document.get("enqueue_after"), int)
            else None,
            retry_count=int(document.get("retry_count") or 0),
            fanout_id=str(document.get("fanout_id") or ""),
            parent_ids=tuple(str(v) for v in parents.values()) if isinstance(parents, dict) else (),
        )


@dataclass
class RunNotes:
    """What the hooks noted about a run's states, beyond the states themselves."""

    requeues: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # state: [(t_ns, delay_ms)]
    copy_of: dict[str, str] = field(default_factory=dict)  # fan-out copy: its original
    final_ns: dict[str, int] = field(default_factory=dict)  # fan-out copy: when it became final
    retry_of: dict[str, str] = field(default_factory=dict)  # manual retry: the state it retries
    next_states_pending: bool = False  # next states are being created for one of its states
    # The attempts runtimes reported with their CPU time (docs/trace-model.md, section "CPU time").
    cpu_seconds: float = 0.0
    executions: int = 0
    # States that settled since the notes were last swept (named by next-states, errored and pruned
    # notes), and those notes, to be marked seen once their states are swept.
    changed: set[str] = field(default_factory=set)
    unseen: list[object] = field(default_factory=list)


def run_outcome(states: list[StateRecord]) -> tuple[str, dict[str, int]]:
    """The run's status (SUCCESS or FAILED, as upstream's run list says it) and its states by status."""
    counts = Counter(state.status for state in states)
    status = "FAILED" if any(counts[s] for s in ERRORED_STATUSES) else "SUCCESS"
    return status, dict(counts)


def is_settled(states: list[StateRecord], notes: RunNotes) -> bool:
    """No state is pending and no next states are being created: the run is over (for now)."""
    return bool(states) and not notes.next_states_pending and all(state.settled for state in states)


def apply_note(note: dict[str, Any], notes: RunNotes, now: int) -> None:
    """Add one stored note to its run's `RunNotes` (shared with the embedded store's notes)."""
    kind = note.get("kind")
    ids = [str(s) for s in note.get("state_ids") or ()]
    if kind == "next":
        if not note.get("done"):
            if now - int(note.get("t_start") or 0) < STALE_TOKEN_NS:
                notes.next_states_pending = True
            return
        for copy in ids[1:]:
            notes.copy_of[copy] = ids[0]
            notes.final_ns[copy] = int(note.get("t_end") or now)
        notes.changed.update(ids)
    elif kind == "settled":
        notes.changed.update(ids)
    elif kind == "requeue":
        state_id = str(note.get("state_id"))
        requeue = (int(note.get("t") or now), int(note.get("delay_ms") or 0))
        notes.requeues.setdefault(state_id, []).append(requeue)
        return  # kept in every read until the run closes
    elif kind == "retry":
        notes.retry_of[str(note.get("state_id"))] = str(note.get("of"))
        return
    elif kind == "cost":
        cpu = note.get("cpu_s")
        if isinstance(cpu, int | float):
            notes.cpu_seconds += float(cpu)
            notes.executions += 1
        return  # kept in every read until the run closes
    if "_id" in note and not note.get("seen"):
        notes.unseen.append(note["_id"])
