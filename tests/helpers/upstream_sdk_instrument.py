"""A pytest plugin that loads exo_otel's SDK side when pytest is configured, before any test module
is imported: an SDK tracer provider (spans to memory), a meter provider, `ExosphereInstrumentor`.
Used by tests/upstream/test_upstream_sdk_suite.py to run upstream's python-sdk tests with exo_otel loaded."""

from __future__ import annotations

from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exo_otel.sdk.instrumentor import ExosphereInstrumentor

_instrumentor = ExosphereInstrumentor()


def pytest_configure(config: Any) -> None:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    _instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
