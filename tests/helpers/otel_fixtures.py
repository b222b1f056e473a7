"""Pytest fixtures for OpenTelemetry: an in-memory span exporter, explicit providers, the instrumentor."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exo_otel.sdk.instrumentor import ExosphereInstrumentor


@pytest.fixture
def span_exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(span_exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def metric_reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def meter_provider(metric_reader: InMemoryMetricReader) -> Iterator[MeterProvider]:
    provider = MeterProvider(metric_readers=[metric_reader])
    yield provider
    provider.shutdown()


@contextmanager
def instrumented(**settings: Any) -> Iterator[ExosphereInstrumentor]:
    """The SDK side instrumented with ``settings`` (`ExosphereInstrumentor.instrument`'s keywords) for
    the ``with`` block, uninstrumented after it whatever happens: the tests' one way to instrument."""
    instrumentor = ExosphereInstrumentor()
    instrumentor.instrument(**settings)
    try:
        yield instrumentor
    finally:
        instrumentor.uninstrument()


@pytest.fixture
def instrumentor(
    tracer_provider: TracerProvider, meter_provider: MeterProvider
) -> Iterator[ExosphereInstrumentor]:
    with instrumented(tracer_provider=tracer_provider, meter_provider=meter_provider) as instrumentor:
        yield instrumentor
