"""The in-place SDK floor of runtime_overhead.py: the least code that makes exo_otel's spans and records.

In the runtime's own process, under the same load as exo_otel, this makes the SDK calls exo_otel makes
for one state (the replayed floor makes them in a loop after the round): at the worker's ``get`` a node
span and an execute span with the same names, kinds, attribute keys and link, started under a remote
sampled parent, the execute span attached; at ``task_done`` the outcome attribute on both (it is
known at the end only), status OK, both ended, detached. In the
``metrics`` variant, the same records: the queue wait and duration histograms with the execute span
current (exemplars), the executions counter outside any span. The attribute values come from the
payload as they are; nothing is derived, placed, sanitised or guarded, and no baggage or log field is
set. What exo_otel does beyond this is its own cost.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

from opentelemetry import context, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from exo_otel.core import attributes as attr
from exo_otel.core.metrics import ExosphereMetrics

_ROOT = trace.set_span_in_context(
    NonRecordingSpan(SpanContext(0x0123_4567_89AB_CDEF_0123_4567_89AB_CDEF, 0x1111_2222_3333_4444,
                                 is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))),
    Context(),
)
_UPSTREAM = SpanContext(0x0123_4567_89AB_CDEF_0123_4567_89AB_CDEF, 0x5555_6666_7777_8888, is_remote=True,
                        trace_flags=TraceFlags(TraceFlags.SAMPLED))
_OK = Status(StatusCode.OK)
_NO_SPAN = context.set_value(context.create_key("no_exemplar"), True, Context())  # empty would mean current
_current: contextvars.ContextVar[tuple[Any, ...] | None] = contextvars.ContextVar("minimal", default=None)


class MinimalTracingQueue(asyncio.Queue[Any]):
    """A runtime's worker queue making the SDK calls exo_otel makes per state, and nothing else."""

    def __init__(self, maxsize: int, tracer: trace.Tracer, metrics: ExosphereMetrics | None,
                 namespace: str, runtime_name: str) -> None:
        super().__init__(maxsize)
        self.tracer, self.metrics = tracer, metrics
        self.namespace, self.runtime_name = namespace, runtime_name

    async def get(self) -> Any:
        state = await super().get()
        node_attributes = {attr.STATE_ID: state["state_id"], attr.NODE_NAME: state["node_name"]}
        parents = state.get("parents") or {}
        links = [Link(_UPSTREAM) for _ in list(parents.values())[-1:]]
        node = self.tracer.start_span(f"node {state['identifier']}", context=_ROOT,
                                      attributes=node_attributes, links=links)
        execute_attributes: dict[str, Any] = {attr.STATE_QUEUE_WAIT_MS: 1.0, **attr.execute_messaging()}
        node_context = trace.set_span_in_context(node, _ROOT)
        execute = self.tracer.start_span(f"execute {state['node_name']}", context=node_context,
                                         kind=SpanKind.CONSUMER, attributes=execute_attributes)
        current = trace.set_span_in_context(execute, node_context)
        metric_attributes = {attr.NAMESPACE: self.namespace, attr.GRAPH_NAME: state.get("graph_name", ""),
                             attr.NODE_NAME: state["node_name"]}
        if self.metrics is not None:
            self.metrics.queue_wait.record(0.01, metric_attributes, context=current)
        _current.set((node, execute, context.attach(current), metric_attributes))
        return state

    def task_done(self) -> None:
        held = _current.get()
        if held is not None:
            _current.set(None)
            node, execute, token, metric_attributes = held
            # The outcome is known at the end only (every state of the benchmark executes).
            execute.set_attribute(attr.STATE_OUTCOME, attr.OUTCOME_EXECUTED)
            node.set_attribute(attr.STATE_OUTCOME, attr.OUTCOME_EXECUTED)
            execute.set_status(_OK)
            if self.metrics is not None:
                outcome_attributes = {**metric_attributes, attr.STATE_OUTCOME: attr.OUTCOME_EXECUTED}
                self.metrics.node_duration.record(0.001, outcome_attributes)
                self.metrics.executions.add(1, outcome_attributes, context=_NO_SPAN)
            execute.end()
            node.end()
            context.detach(token)
        super().task_done()
