"""Where the state manager side keeps what it must share across requests and processes.

Everything here lives with the run in the state manager's own storage (MongoDB for upstream), never
only in process memory: a state manager runs several processes and restarts. Claims are atomic, so
each span is emitted by exactly one process.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, NamedTuple, Protocol

from exo_otel.server.context import RunContext
from exo_otel.server.records import RunNotes, StateRecord

CHECK_KEYS: Final = 1 << 62
"""Check keys are in [0, CHECK_KEYS): an int64 for any database."""


def check_key(run_id: str) -> int:
    """A run's place in the background check's round: its id hashed, so keys are spread uniformly
    whatever the ids look like, and every process computes the same key for a run."""
    digest = hashlib.blake2b(run_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 2


class StaleClaim(NamedTuple):
    """A claim taken over from a process that died before confirming it: its run, and for a root the end
    its claimant gave it (the trigger's end), so that a root emitted again is the same span."""

    run_id: str
    root_end_ns: int | None = None


class RunStore(Protocol):
    """The state manager side's storage, as the hooks and the sweeper use it."""

    async def ensure_indexes(self) -> None:
        """Make sure every query below is served by an index (idempotent; called before each pass)."""

    async def save_run(self, run: RunContext) -> None:
        """Keep a new run's context (not yet swept: `mark_ready` makes it so)."""

    async def mark_ready(self, run: RunContext) -> None:
        """The trigger is complete: the run's states are in; the sweeper may settle it. A run whose
        context is gone meanwhile (taken for a dead trigger's, `discard_run`) is kept again."""

    async def discard_run(self, run_id: str) -> None:
        """The trigger failed: forget the run's context, if it is not ready (a ready run stays)."""

    async def stalled_triggers(self, started_before_ns: int, limit: int) -> list[RunContext]:
        """Runs whose trigger began before ``started_before_ns`` and never completed (not ready): at
        most ``limit``, the oldest first. Their process died mid-trigger, or is very slow."""

    async def runs_with_states(self, run_ids: Sequence[str]) -> set[str]:
        """Those of these runs the state manager holds a state of."""

    async def load_runs(self, run_ids: Iterable[str]) -> dict[str, RunContext]:
        """The contexts of these runs (those that have one)."""

    def states_taken(self, runs_by_state: Mapping[str, str]) -> None:
        """Runtimes took these states (state id -> run id): a store that reads a state's run by its id
        may keep them for the state's report (a state's run never changes), until the attempt's end
        is noted (`begin_next_states`, `note_settled`, `note_requeue`)."""

    async def begin_next_states(self, state_ids: Sequence[str]) -> object:
        """Next states are being created after these states (the first is the original, the rest
        its fan-out copies): their run cannot settle until `end_next_states`. Returns a token."""

    async def end_next_states(self, token: object, t_ns: int) -> None:
        """Next states are created (or failed): these states settled, the copies became final at
        ``t_ns``; their run is touched."""

    async def note_settled(self, state_id: str) -> None:
        """The state settled outside next-states creation (errored, pruned): its run is touched."""

    async def note_requeue(self, state_id: str, t_ns: int, delay_ms: int) -> None:
        """A state was put back in the queue for ``delay_ms``."""

    async def note_cost(self, state_id: str, cpu_seconds: float) -> object | None:
        """A runtime reports an attempt of ``state_id`` that used ``cpu_seconds`` of CPU: noted with its
        run BEFORE the report is handled (so the run cannot settle without it). Returns a token for
        `withdraw_note`, or None when the state has no run here."""

    async def withdraw_note(self, token: object) -> None:
        """The report `note_cost` noted was refused by the state manager: the note goes."""

    async def note_retry(self, state_id: str, retried_state_id: str, run_id: str) -> bool:
        """A manual retry: ``state_id`` retries ``retried_state_id``; its run is open again (its expiry
        cleared), touched. False, and nothing noted, when the run's records are gone."""

    async def revive_run(self, run: RunContext) -> None:
        """Keep again the context of a run whose records were purged, ready and open, its outcome
        claimed (it was made when the run first settled). Another process reviving it too is fine."""

    async def touched_runs(self, limit: int) -> list[RunContext]:
        """Open, ready runs touched since their last sweep (at most ``limit``), taken: a touch from now on
        makes a run come again. A store may keep touches per process (the process that saw a change
        sweeps it; one that dies first leaves it to the background check)."""

    async def open_runs_by_key(self, from_key: int, to_key: int, limit: int) -> list[RunContext]:
        """Open, ready runs whose `check_key` is in [``from_key``, ``to_key``), by key, at most
        ``limit``: the background check's page. A store keeps a run's key only while it is open and
        ready, indexed, so a page reads what its bounds admit and nothing else."""

    async def run_changes(
        self, run_ids: Sequence[str]
    ) -> tuple[dict[str, list[StateRecord]], dict[str, RunNotes]]:
        """The notes of these runs not seen yet, then the states they name (``RunNotes.changed``)
        with the states their spans refer to (a copy's original, a retry's previous attempt, the state
        a manual retry retries).

        Notes BEFORE states: a next-states token seen done then guarantees that the states it created
        are in what is read after (else a run could look settled between upstream marking its parents
        SUCCESS and inserting a unites state).
        """

    async def run_records(
        self, run_ids: Sequence[str]
    ) -> tuple[dict[str, list[StateRecord]], dict[str, RunNotes]]:
        """Every state of these runs and all their notes (notes first, as in `run_changes`)."""

    async def unsettled_runs(self, run_ids: Sequence[str]) -> set[str]:
        """Those of these runs with a state still pending."""

    async def notes_seen(self, note_ids: Sequence[object]) -> None:
        """These notes' states are swept: `run_changes` no longer returns them."""

    async def claim_nodes(self, runs_by_state: Mapping[str, str], lease_until_ns: int) -> set[str]:
        """Atomically claim these states' node spans (state id to run id, any runs, in one go); returns
        the state ids this caller won. A claim is leased until ``lease_until_ns``: unless the caller
        confirms it (`confirm_claims`) by then, another process may take it over (`take_over_stale`)."""

    async def claim_outcomes(self, run_ids: Sequence[str], lease_until_ns: int) -> set[str]:
        """Atomically claim these runs' outcome spans (once ever each, leased as `claim_nodes`); returns
        those this caller won."""

    async def claim_root(self, run_id: str, lease_until_ns: int, end_ns: int) -> bool:
        """Claim the run's root, which the process handling its trigger emits ending at ``end_ns``
        (leased as `claim_nodes`, so that a process that dies before exporting it leaves it to another,
        with its end kept: see `take_over_stale`); True when won."""

    async def confirm_claims(self, keys: Sequence[str]) -> None:
        """These claims' spans are exported (``node:<state id>``, ``outcome:<run id>``): final."""

    async def renew_claims(self, keys: Sequence[str], lease_until_ns: int) -> None:
        """These claims are still this caller's, its export not done yet: their lease runs to
        ``lease_until_ns`` (a process alive but slow to export keeps its claims)."""

    async def take_over_stale(self, now_ns: int, lease_until_ns: int, limit: int) -> dict[str, StaleClaim]:
        """Claims whose lease passed unconfirmed (their process died before exporting): at most ``limit``
        of them, taken over atomically with a new lease; returns the keys this caller took, with their
        runs (and a root's end)."""

    async def unconfirmed_runs(self, run_ids: Sequence[str]) -> set[str]:
        """Those of these runs with a node or outcome claim not final yet (its span may still be taken
        over, and emitted from the run's notes: the run must not close yet). Root claims do not count:
        a root is emitted from the run's context alone."""

    async def close_runs(self, run_ids: Sequence[str], expires_ns: int) -> None:
        """These runs are settled and their spans emitted: stop sweeping them, drop their notes; their
        records (context, claims) may go once ``expires_ns`` has passed, unless a retry reopens them."""

    async def purge_expired(self, now_ns: int, limit: int) -> int:
        """Remove the records of at most ``limit`` closed runs whose expiry passed (not reopened since);
        returns how many runs went."""
