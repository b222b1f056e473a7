"""A run's context on the state manager side: what is decided once at trigger time and carried to every state.

The run root is ``run {graph_name}`` (PRODUCER): trace id ``trace_id_for_run(run_id)``, span id
``h64("exosphere.run", run_id)``, sampled as the server's sampler decided when the run started.
The caller's baggage (from the trigger request's W3C headers) travels with it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from opentelemetry import baggage, propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.sampling import Decision, Sampler
from opentelemetry.trace import SpanContext, SpanKind

from exo_otel.core import attributes as attr
from exo_otel.core.ids import run_root_span_context, trace_id_for_run

# The top-level fields of an enqueued state that carry the run's W3C context (wire names:
# docs/trace-model.md, section "The carrier").
CARRIER_FIELDS: Final = ("traceparent", "tracestate", "baggage")
NODE_SPANS_FIELD: Final = "node_spans"
NODE_SPANS_SERVER: Final = "server"


def root_name(graph_name: str) -> str:
    return f"run {graph_name}".rstrip()


def outcome_name(graph_name: str) -> str:
    return f"settle {graph_name}".rstrip()


@dataclass(frozen=True)
class RunContext:
    """What the state manager side keeps with a run (in the database) from its trigger to its root span."""

    run_id: str
    namespace: str
    graph_name: str
    start_ns: int
    sampled: bool
    baggage: dict[str, str] = field(default_factory=dict)
    # The caller's span when the trigger request carried a sampled one: the run root links to it.
    caller_trace_id: int | None = None
    caller_span_id: int | None = None
    # A run revived by a late event after its records were purged: its states created before this
    # had their node spans emitted already (and its outcome was made at its first settle).
    emit_from_ns: int = 0

    def root_span_context(self) -> SpanContext:
        return run_root_span_context(self.run_id, self.sampled)

    def root_context(self) -> Context:
        """A fresh context whose current span is the (remote) run root, with the run's baggage."""
        context = trace.set_span_in_context(trace.NonRecordingSpan(self.root_span_context()), Context())
        for key, value in self.baggage.items():
            context = baggage.set_baggage(key, value, context)
        return context

    def carrier(self) -> dict[str, str]:
        """The run's W3C fields (written by the configured propagators): traceparent, tracestate, baggage."""
        written: dict[str, str] = {}
        propagate.inject(written, context=self.root_context())
        return {key: written[key] for key in CARRIER_FIELDS if written.get(key)}

    def to_document(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "namespace": self.namespace,
            "graph_name": self.graph_name,
            "start_ns": self.start_ns,
            "sampled": self.sampled,
            "baggage": dict(self.baggage),
            "caller": None
            if self.caller_trace_id is None
            else [f"{self.caller_trace_id:032x}", f"{self.caller_span_id or 0:016x}"],
            "emit_from_ns": self.emit_from_ns,
        }

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> RunContext:
        caller = document.get("caller")
        raw_baggage = document.get("baggage")
        return cls(
            run_id=str(document["run_id"]),
            namespace=str(document.get("namespace", "")),
            graph_name=str(document.get("graph_name", "")),
            start_ns=int(document.get("start_ns") or time.time_ns()),
            sampled=bool(document.get("sampled", True)),
            baggage={str(k): str(v) for k, v in raw_baggage.items()} if isinstance(raw_baggage, dict) else {},
            caller_trace_id=int(caller[0], 16) if isinstance(caller, list) and len(caller) == 2 else None,
            caller_span_id=int(caller[1], 16) if isinstance(caller, list) and len(caller) == 2 else None,
            emit_from_ns=int(document.get("emit_from_ns") or 0),
        )


def new_run_context(
    run_id: str,
    namespace: str,
    graph_name: str,
    start_ns: int,
    sampler: Sampler | None,
    headers: Mapping[str, str] | None = None,
) -> RunContext:
    """Decide, once, whether the run is sampled, and take the caller's baggage from its request headers."""
    caller_baggage: dict[str, str] = {}
    caller_trace_id = caller_span_id = None
    if headers:
        extracted = propagate.extract(headers, context=Context())
        caller_baggage = {str(k): str(v) for k, v in baggage.get_all(extracted).items()}
        caller = trace.get_current_span(extracted).get_span_context()
        if caller.is_valid and caller.trace_flags.sampled:
            caller_trace_id, caller_span_id = caller.trace_id, caller.span_id
    sampled = True
    if sampler is not None:
        result = sampler.should_sample(
            None,
            trace_id_for_run(run_id),
            root_name(graph_name),
            SpanKind.PRODUCER,
            {attr.NAMESPACE: namespace, attr.GRAPH_NAME: graph_name, attr.RUN_ID: run_id},
        )
        sampled = result.decision is Decision.RECORD_AND_SAMPLE
    return RunContext(
        run_id, namespace, graph_name, start_ns, sampled, caller_baggage, caller_trace_id, caller_span_id
    )


def run_fields(run_id: str, graph_name: str, parents: Mapping[str, Any]) -> dict[str, Any]:
    """The run an enqueued state belongs to, as the SDK side reads it from the answer: its id, its graph
    and the state's parents (node identifier to state id). The first part of `enqueue_extension`; an
    embedded state manager asked to expose the run context adds these alone."""
    by_identifier = {str(k): str(v) for k, v in parents.items()}
    return {"run_id": run_id, "graph_name": graph_name, "parents": by_identifier}


def enqueue_extension(
    run: RunContext, parents: Mapping[str, Any], retry_count: int, node_spans_by_server: bool = True
) -> dict[str, Any]:
    """The fields an enqueued state gains: its run, its parents, its retry count and the run's carrier."""
    extension: dict[str, Any] = {
        **run_fields(run.run_id, run.graph_name, parents),
        "retry_count": int(retry_count),
        **run.carrier(),
    }
    if node_spans_by_server:
        extension[NODE_SPANS_FIELD] = NODE_SPANS_SERVER
    return extension
