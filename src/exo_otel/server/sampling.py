"""Spans of a run recorded as the run's stored decision says, whatever the sampler would say now.

The server's sampler decides once for a run, at trigger time (`exo_otel.server.context.new_run_context`).
The run root and the node spans are made later, maybe by another process: the tracer they are made
with gets a `StoredDecisionSampler`, which returns the decision pinned around the ``start_span`` call.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

_decision: contextvars.ContextVar[bool | None] = contextvars.ContextVar("exo_otel_run_decision", default=None)


@contextmanager
def stored_decision(sampled: bool) -> Iterator[None]:
    """Within the block, a `StoredDecisionSampler` answers ``sampled`` (hold it around one start_span)."""
    token = _decision.set(sampled)
    try:
        yield
    finally:
        _decision.reset(token)


class StoredDecisionSampler(Sampler):
    """Answers the decision pinned by `stored_decision`; otherwise asks the sampler it wraps."""

    def __init__(self, delegate: Sampler) -> None:
        self.delegate = delegate

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        decided = _decision.get()
        if decided is None:
            return self.delegate.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )
        parent_state = trace.get_current_span(parent_context).get_span_context().trace_state
        if decided:
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, parent_state)
        return SamplingResult(Decision.DROP, None, parent_state)

    def get_description(self) -> str:
        return f"StoredDecisionSampler{{{self.delegate.get_description()}}}"


def install_stored_decision(tracer: trace.Tracer) -> Sampler | None:
    """Give an SDK tracer a `StoredDecisionSampler`; return the sampler deciding new runs (None: not SDK)."""
    if not isinstance(tracer, SdkTracer):
        return None
    current = tracer.sampler
    if isinstance(current, StoredDecisionSampler):
        return current.delegate
    tracer.sampler = StoredDecisionSampler(current)
    return current
