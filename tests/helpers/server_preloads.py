"""UPSTREAM_SM_PRELOAD hooks of the upstream tests: the state manager side with a provider set up by hand.

Imported in the real state manager's process (the tests put this folder on its PYTHONPATH); spans
go to OTEL_EXPORTER_OTLP_ENDPOINT over OTLP/HTTP.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from exo_otel.server.instrumentor import StateManagerInstrumentor

KEEP_GRAPH = "EXO_OTEL_KEEP_GRAPH"


class KeepOneGraph(Sampler):
    """Records the runs of one graph only: decides on an attribute, never on the trace id."""

    def __init__(self, graph_name: str) -> None:
        self.graph_name = graph_name

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
        keep = (attributes or {}).get("exosphere.graph.name") == self.graph_name
        return SamplingResult(
            Decision.RECORD_AND_SAMPLE if keep else Decision.DROP, attributes if keep else None
        )

    def get_description(self) -> str:
        return f"KeepOneGraph({self.graph_name})"


class BrokenSampler(Sampler):
    def should_sample(self, *args: object, **kwargs: object) -> SamplingResult:
        raise RuntimeError("sampler broken on purpose")

    def get_description(self) -> str:
        return "BrokenSampler"


class BrokenProcessor(SpanProcessor):
    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        raise RuntimeError("span processor broken on purpose")

    def on_end(self, span: ReadableSpan) -> None:
        raise RuntimeError("span processor broken on purpose")


def _provider(sampler: Sampler) -> TracerProvider:
    provider = TracerProvider(sampler=sampler, resource=Resource.create({"service.name": "state-manager"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


def keep_one_graph() -> None:
    """The side with a sampler that keeps the runs of $EXO_OTEL_KEEP_GRAPH only."""
    provider = _provider(ParentBased(KeepOneGraph(os.environ[KEEP_GRAPH])))
    StateManagerInstrumentor().instrument(tracer_provider=provider)


def broken_telemetry() -> None:
    """The side with a sampler and a span processor that raise: requests must not notice."""
    provider = _provider(BrokenSampler())
    provider.add_span_processor(BrokenProcessor())
    StateManagerInstrumentor().instrument(tracer_provider=provider)
