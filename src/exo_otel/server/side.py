"""The state manager side's behaviour, independent of which state manager it is in.

The adapters (the upstream patches, the embedded server) call these at the moments that matter:
a run starts, a runtime takes states, next states are being created, a state is requeued or
manually retried. Nothing here may fail a request: every entry point is guarded by its caller.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace.sampling import Sampler

from exo_otel.core import attributes as attr
from exo_otel.core.cpu_report import CPU_TIME_HEADER, read_cpu_time_header
from exo_otel.core.lru import LruCache
from exo_otel.server.context import RunContext, enqueue_extension, new_run_context
from exo_otel.server.spans import ServerMetrics
from exo_otel.server.store import RunStore
from exo_otel.server.sweeper import DEFAULT_RETENTION_SECONDS, Flush, Sweeper

_CACHE_SIZE = 10_000
_CACHE_MAX_AGE_SECONDS = 60.0


@dataclass(frozen=True)
class TakenState:
    """A state a runtime just took off the queue, with what the store knows of it."""

    state_id: str
    run_id: str
    parents: Mapping[str, Any]
    retry_count: int
    created_ns: int | None = None


@dataclass
class ServerSide:
    """One `instrument()` call's state manager side: its tracer, store, sweep and run context cache."""

    tracer: trace.Tracer
    store: RunStore
    sampler: Sampler | None = None
    metrics: ServerMetrics | None = None
    node_spans_by_server: bool = True
    enabled: bool = True
    retention_seconds: float = DEFAULT_RETENTION_SECONDS
    flush: Flush | None = None  # exports what the sweep emitted, before its claims are made final
    sweeper: Sweeper = field(init=False)
    # Run contexts by run id, with when they were read: kept a bounded time, since another process may
    # purge a run's records once its retention passed, and a run without records gets no extension.
    _contexts: LruCache[str, tuple[RunContext, float]] = field(
        default_factory=lambda: LruCache(_CACHE_SIZE)
    )

    def __post_init__(self) -> None:
        self.sweeper = Sweeper(
            self.store, self.tracer, self.metrics, retention_seconds=self.retention_seconds,
            flush=self.flush,
        )

    def _max_age(self) -> float:
        return min(_CACHE_MAX_AGE_SECONDS, self.retention_seconds / 10)

    def _remember(self, run: RunContext) -> None:
        # A run's context never changes once made; only whether its records still exist does.
        now = time.monotonic()
        self._contexts.put(run.run_id, (run, now))
        # Oldest first (each entry moves to the end when remembered): those past their age are never
        # used again, so they go now, not only once 10,000 runs have been remembered since.
        max_age = self._max_age()
        while (oldest := self._contexts.oldest()) is not None and now - oldest[1][1] > max_age:
            self._contexts.pop(oldest[0])

    def _cached(self, run_id: str, now: float) -> RunContext | None:
        entry = self._contexts.peek(run_id)  # no recency: the order stays the order they were read
        if entry is None or now - entry[1] > self._max_age():
            return None
        return entry[0]

    async def run_starting(
        self, run_id: str, namespace: str, graph_name: str, start_ns: int, headers: Mapping[str, str] | None
    ) -> RunContext:
        """A run was minted: decide its sampling once, take the caller's baggage, keep both with the run."""
        run = new_run_context(run_id, namespace, graph_name, start_ns, self.sampler, headers)
        await self.store.save_run(run)
        self._remember(run)
        return run

    async def run_started(self, run: RunContext) -> None:
        """The trigger completed: the run's root is emitted now, and the run may settle from now on.

        Only the process handling the trigger gets here, once per run: its claim of the root always
        wins (unless it took so long that another process took it for dead), and is made final once
        the root is exported (`Sweeper.start_run`), or taken over by another process if this one dies
        before it.
        """
        await self.sweeper.start_run(run, time.time_ns())
        self.sweeper.nudge()

    async def state_retried(
        self,
        state_id: str,
        retried_state_id: str,
        run_id: str,
        namespace: str,
        graph_name: str,
        created_ns: int,
    ) -> None:
        """A manual retry made ``state_id``: note it with its run, reopened. A run whose records were
        purged (its retention passed) is revived from its id: its sampling decided again (the same
        for trace-id ratio samplers), its baggage lost, node spans for its states from this one on."""
        if not await self.store.note_retry(state_id, retried_state_id, run_id):
            revived = new_run_context(run_id, namespace, graph_name, created_ns, self.sampler)
            run = replace(revived, emit_from_ns=created_ns)
            await self.store.revive_run(run)
            self._remember(run)
            await self.store.note_retry(state_id, retried_state_id, run_id)
        self.sweeper.nudge()

    async def attempt_reported(self, state_id: str, headers: Mapping[str, str] | None) -> object | None:
        """A runtime reports an attempt of ``state_id`` (executed, errored, pruned, requeued), with its
        CPU time in a header when it measured it: noted with the run for its sum, before the report is
        handled. Returns a token for `report_refused`, or None when nothing was noted."""
        value = headers.get(CPU_TIME_HEADER) if headers is not None else None
        seconds = read_cpu_time_header(value)
        if seconds is None:
            return None
        return await self.store.note_cost(state_id, seconds)

    async def report_refused(self, token: object) -> None:
        """The state manager refused the report `attempt_reported` noted: its CPU time is not the run's."""
        await self.store.withdraw_note(token)

    async def run_failed_to_start(self, run_id: str) -> None:
        self._contexts.pop(run_id)
        await self.store.discard_run(run_id)

    async def contexts(self, run_ids: Iterable[str]) -> dict[str, RunContext]:
        wanted = set(run_ids)
        now = time.monotonic()
        found = {run_id: run for run_id in wanted if (run := self._cached(run_id, now)) is not None}
        missing = wanted - set(found)
        if missing:
            loaded = await self.store.load_runs(missing)
            for run in loaded.values():
                self._remember(run)
            found.update(loaded)
        return found

    async def states_taken(self, taken: Sequence[TakenState], namespace: str) -> dict[str, dict[str, Any]]:
        """Runtimes took these states: note when, and return each one's enqueue extension (by state id).
        Taking a state settles nothing: the sweep is started if it is not running (its background check
        runs in every process), not made to pass (a poll would cost a database query)."""
        self.sweeper.start()
        if not taken:
            return {}
        self.store.states_taken({state.state_id: state.run_id for state in taken})
        now = time.time_ns()
        runs = await self.contexts(state.run_id for state in taken)
        extensions: dict[str, dict[str, Any]] = {}
        for state in taken:
            run = runs.get(state.run_id)
            if run is None:
                continue  # a run started before the side was loaded: runtimes fall back
            extensions[state.state_id] = enqueue_extension(
                run, state.parents, state.retry_count, self.node_spans_by_server
            )
            if self.metrics is not None and state.created_ns is not None:
                self.metrics.state_queue_wait.record(
                    max(0, now - state.created_ns) / 1e9,
                    {attr.NAMESPACE: namespace, attr.GRAPH_NAME: run.graph_name},
                )
        return extensions

    def trigger_answer_extension(self, run: RunContext) -> dict[str, str]:
        """What the trigger answer gains: the run root's ``traceparent`` (the server owns the root)."""
        carrier = run.carrier()
        return {"traceparent": carrier["traceparent"]} if "traceparent" in carrier else {}
