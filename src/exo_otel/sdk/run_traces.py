"""The trace a runtime puts a run's states in: derived once per run, reused by every state of the run.

Everything here depends on the run alone (its id, graph name and carrier) and on the sampler, so a
runtime computes it for the first state of a run and looks it up for the others: no UUID parsing,
hashing, carrier extraction or sampler call per state.
"""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry import baggage, trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import Sampler
from opentelemetry.trace import SpanContext, TraceFlags

from exo_otel.core import attributes as attr
from exo_otel.core.ids import state_span_id, trace_flags, trace_id_for_run
from exo_otel.core.lru import LruCache
from exo_otel.core.sanitize import clean_text, log_safe
from exo_otel.sdk.context_keys import BAGGAGE_KEY
from exo_otel.sdk.state_context import (
    RunInfo,
    carried_context,
    parent_context,
    run_is_sampled,
    run_root_context,
)


@dataclass(slots=True)
class RunTrace:
    """A run as its states' spans need it. Never changed once made (not frozen: a frozen one costs
    ~5k instructions more to make, once per run)."""

    trace_id: int
    flags: TraceFlags
    """The run's sampling decision (the carrier's flag, or the sampler's for the run's root)."""
    node_parent: Context
    """Where the run's node spans start: the run root as current span (and the carried baggage)."""
    execution_base: Context
    """``node_parent`` with the run's baggage entries: what an execution's context starts from."""
    node_spans_by_server: bool
    """The state manager side emits the run's node spans: executions go under their derived ids."""
    run_id_for_logs: str
    """The run id as log records carry it (cleaned, control characters escaped)."""
    attributes: dict[str, str]
    """The run's baggage entries (namespace, run id, graph name), cleaned, where its states' metric
    attributes take namespace and graph from (their spans do not carry them); shared, never changed."""
    log_trace: tuple[int, str]
    """``trace_id`` and its 32 hex digits, as log records carry it (`exo_otel.sdk.logs.LogFields`)."""

    def state_context(self, state_id: str) -> SpanContext:
        """The remote context of a state's node span in this run."""
        return SpanContext(self.trace_id, state_span_id(state_id), True, self.flags)  # remote


def run_trace(run: RunInfo, namespace: str, sampler: Sampler | None) -> RunTrace:
    """Derive the run's trace: from the state manager side's carrier when it sent a valid one, else
    from the run id and the sampler (what the trigger side decided)."""
    trace_id = trace_id_for_run(run.run_id)
    carried = carried_context(run, trace_id)
    if carried is not None:
        sampled = trace.get_current_span(carried).get_span_context().trace_flags.sampled
        node_parent = carried
    else:
        sampled = run_is_sampled(sampler, run, trace_id)
        node_parent = parent_context(run_root_context(run, sampled))
    entries = run_baggage(run, namespace)
    return RunTrace(
        trace_id,
        trace_flags(sampled),
        node_parent,
        with_baggage(node_parent, entries),
        carried is not None and run.node_spans_by_server,
        log_safe(entries[attr.RUN_ID]),
        entries,
        (trace_id, trace_id.to_bytes(16).hex()),  # f"{trace_id:032x}", in fewer instructions
    )


def with_baggage(context: Context, entries: dict[str, str]) -> Context:
    """``context`` with these baggage entries added: one new context, through the API's baggage key
    (`exo_otel.sdk.context_keys`), or the API calls when that key could not be found."""
    if BAGGAGE_KEY is None:
        for key, value in entries.items():
            context = baggage.set_baggage(key, value, context)
        return context
    inherited = context.get(BAGGAGE_KEY)
    merged = {**inherited, **entries} if isinstance(inherited, dict) else dict(entries)
    return Context({**context, BAGGAGE_KEY: merged})


def run_baggage(run: RunInfo | None, namespace: str) -> dict[str, str]:
    """The run-wide baggage entries an execution carries (the keys of docs/trace-model.md, section
    "Baggage", that are not per state)."""
    entries = {attr.NAMESPACE: clean_text(namespace)}
    if run is not None:
        entries[attr.RUN_ID] = clean_text(run.run_id)
        if run.graph_name:
            entries[attr.GRAPH_NAME] = clean_text(run.graph_name)
    return entries


class RunTraces:
    """A runtime's runs, each derived once; the least recently used are forgotten beyond ``max_runs``.

    Forgetting costs nothing but a recomputation: a run's trace is a function of the run.
    """

    def __init__(self, namespace: str, sampler: Sampler | None, max_runs: int = 4096) -> None:
        self._namespace = namespace
        self._sampler = sampler
        self._traces: LruCache[tuple[str, str | None, tuple[tuple[str, str], ...], bool], RunTrace] = (
            LruCache(max(1, max_runs))
        )
        self.no_run: dict[str, str] = run_baggage(None, namespace)
        """The run-wide entries of a state placed in no run: the namespace alone (its node span, the
        root of the state's own trace, carries it)."""
        self.outside_any_run: Context = with_baggage(Context(), self.no_run)
        """The base context of an execution placed in no run: the namespace entry, nothing else."""

    def of(self, run: RunInfo) -> RunTrace:
        # Keyed by all the trace depends on: a state with another carrier or graph name gets its own.
        key = (run.run_id, run.graph_name, run.carrier, run.node_spans_by_server)
        found = self._traces.get(key)
        if found is None:
            found = run_trace(run, self._namespace, self._sampler)
            self._traces.put(key, found)
        return found
