"""Fixtures of the unit tests: a real SDK tracer provider (exporting to memory) and meter provider.

Nothing here comes from the other helper modules of tests/: only pytest, the OpenTelemetry SDK and exo_otel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exo_otel.core.attributes import SCHEMA_URL
from exo_otel.core.metrics import ExosphereMetrics
from exo_otel.core.providers import install_run_id_generator
from exo_otel.sdk.config import Settings
from exo_otel.sdk.telemetry import Telemetry
from exo_otel.server.sampling import install_stored_decision


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """An SDK provider whose id generator pins exo_otel's ids, as both instrumentors make it."""
    tracer_provider = TracerProvider()
    install_run_id_generator(tracer_provider)
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield tracer_provider
    tracer_provider.shutdown()


@pytest.fixture
def tracer(provider: TracerProvider) -> trace.Tracer:
    return provider.get_tracer("exo_otel.unit", schema_url=SCHEMA_URL)


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def meter_provider(reader: InMemoryMetricReader) -> Iterator[MeterProvider]:
    provider = MeterProvider(metric_readers=[reader])
    yield provider
    provider.shutdown()


@pytest.fixture
def telemetry(provider: TracerProvider, meter_provider: MeterProvider) -> Telemetry:
    """What the SDK side's wrappers close over, made as the instrumentor makes it (default settings)."""
    return Telemetry(
        tracer=provider.get_tracer("exo_otel.sdk.instrumentor", schema_url=SCHEMA_URL),
        metrics=ExosphereMetrics.create(meter_provider.get_meter("exo_otel.sdk", schema_url=SCHEMA_URL)),
        settings=Settings(),
        sampler=provider.sampler,
    )


@pytest.fixture
def points(reader: InMemoryMetricReader) -> Callable[[str], list[Any]]:
    """``points(name)``: the data points of one metric, as the reader collects them now."""

    def collect(name: str) -> list[Any]:
        data = reader.get_metrics_data()
        if data is None:
            return []
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]

    return collect


@pytest.fixture
def server_tracer(provider: TracerProvider) -> trace.Tracer:
    """The state manager side's tracer, as its adapters make it: spans get the run's stored decision."""
    tracer = provider.get_tracer("exo_otel.server", schema_url=SCHEMA_URL)
    install_stored_decision(tracer)
    return tracer
