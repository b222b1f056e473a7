"""The demo's own tracer and meter providers: spans kept in memory, plus OTLP or Prometheus per OTEL_*."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final
from wsgiref.simple_server import WSGIServer

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exo_otel.core.ids import RunIdGenerator, trace_id_for_run

OTLP_PROTOCOLS: Final = ("grpc", "http/protobuf")
PROMETHEUS_HOST_DEFAULT: Final = "127.0.0.1"
"""Loopback unless ``OTEL_EXPORTER_PROMETHEUS_HOST`` says otherwise: the demo serves no one else."""
PROMETHEUS_PORT_DEFAULT: Final = 9464
EXPORT_TIMEOUT_S: Final = 2.0
"""How long one OTLP export may take, retries included, unless OTEL_EXPORTER_OTLP_TIMEOUT says otherwise.

The exporters' default is 10 s of retries per export: with the collector down, a demo that finished
its runs would sit that long (once per signal) before exiting.
"""


class TelemetryError(Exception):
    """The OTEL_* configuration cannot be honoured (bad protocol, port in use)."""


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def _exporters(name: str, default: str) -> set[str]:
    return {part.strip().lower() for part in (_env(name) or default).split(",") if part.strip()}


def _protocol(signal: str) -> str:
    protocol = _env(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL") or _env("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
    if protocol not in OTLP_PROTOCOLS:
        raise TelemetryError(f"OTLP protocol {protocol!r} is not one of {', '.join(OTLP_PROTOCOLS)}")
    return protocol


def _export_timeout(signal: str) -> float | None:
    """`EXPORT_TIMEOUT_S`, or None where the user set a timeout (the exporter then reads it)."""
    if _env(f"OTEL_EXPORTER_OTLP_{signal}_TIMEOUT") or _env("OTEL_EXPORTER_OTLP_TIMEOUT"):
        return None
    return EXPORT_TIMEOUT_S


def _otlp_span_exporter() -> SpanExporter:
    # The standard exporters read the endpoint, headers, timeout and TLS settings from OTEL_* themselves.
    timeout = _export_timeout("TRACES")
    if _protocol("TRACES") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc

        return Grpc(timeout=timeout)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

    return Http(timeout=timeout)


def _otlp_metric_exporter() -> MetricExporter:
    timeout = _export_timeout("METRICS")
    if _protocol("METRICS") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as Grpc

        return Grpc(timeout=timeout)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as Http

    return Http(timeout=timeout)


class _CountingSpanExporter(SpanExporter):
    """Passes spans to an exporter and counts those it could not deliver."""

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter
        self.undelivered = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.exporter.export(spans)
        if result is not SpanExportResult.SUCCESS:
            self.undelivered += len(spans)
        return result

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)


@dataclass
class DemoTelemetry:
    """The demo's own providers (never the global ones) and where their data goes."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    spans: InMemorySpanExporter
    notes: list[str] = field(default_factory=list)
    metrics_server: tuple[WSGIServer, threading.Thread] | None = None
    otlp_endpoint: str | None = None
    """Where spans or metrics go over OTLP; None when nothing is exported over OTLP."""
    otlp_spans: _CountingSpanExporter | None = None

    @classmethod
    def start(cls, prometheus: bool | None = None) -> DemoTelemetry:
        """Providers per the OTEL_* variables; ``prometheus`` overrides ``OTEL_METRICS_EXPORTER``."""
        attributes = {} if _env("OTEL_SERVICE_NAME") else {SERVICE_NAME: "exo-otel-demo"}
        resource = Resource.create(attributes)
        spans = InMemorySpanExporter()
        tracer_provider = TracerProvider(resource=resource, id_generator=RunIdGenerator())
        tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
        notes = ["spans: kept in memory for the waterfall"]
        readers: list[MetricReader] = []
        endpoint = _env("OTEL_EXPORTER_OTLP_ENDPOINT")
        metric_exporters = _exporters("OTEL_METRICS_EXPORTER", "otlp")
        otlp_spans = None
        if endpoint and "otlp" in _exporters("OTEL_TRACES_EXPORTER", "otlp"):
            otlp_spans = _CountingSpanExporter(_otlp_span_exporter())
            tracer_provider.add_span_processor(BatchSpanProcessor(otlp_spans))
            notes.append(f"spans: OTLP ({_protocol('TRACES')}) to {endpoint}")
        otlp_metrics = endpoint and "otlp" in metric_exporters
        if otlp_metrics:
            readers.append(PeriodicExportingMetricReader(_otlp_metric_exporter()))
            notes.append(f"metrics: OTLP ({_protocol('METRICS')}) to {endpoint}")
        server = None
        if prometheus if prometheus is not None else "prometheus" in metric_exporters:
            server, reader, url = _serve_prometheus()
            readers.append(reader)
            notes.append(f"metrics: Prometheus exposition on {url}")
        meter_provider = MeterProvider(metric_readers=readers, resource=resource, shutdown_on_exit=False)
        exported_to = endpoint if otlp_spans is not None or otlp_metrics else None
        return cls(tracer_provider, meter_provider, spans, notes, server, exported_to, otlp_spans)

    def describe(self) -> list[str]:
        return list(self.notes)

    def serving_note(self) -> str:
        served = [note.split(" on ", 1)[1] for note in self.notes if "Prometheus" in note]
        return f" (metrics on {served[0]})" if served else ""

    def run_spans(self, run_id: str) -> list[ReadableSpan]:
        """The finished spans of the run's trace."""
        trace_id = trace_id_for_run(run_id)
        return [s for s in self.spans.get_finished_spans() if s.context and s.context.trace_id == trace_id]

    @property
    def exports_spans(self) -> bool:
        """True when spans leave this process (over OTLP), so a trace can be opened elsewhere."""
        return self.otlp_spans is not None

    def shutdown(self) -> None:
        """Flush and stop the exporters and the metrics server; leaves no thread behind.

        Spans and metrics flush side by side, each export bounded by `EXPORT_TIMEOUT_S`.
        """
        spans = threading.Thread(target=self.tracer_provider.shutdown, name="exo-otel-demo-flush")
        spans.start()
        if self.metrics_server is not None:
            server, thread = self.metrics_server
            server.shutdown()
            server.server_close()
            thread.join()
        self.meter_provider.shutdown()
        spans.join()

    def undelivered_spans(self) -> int:
        """Spans the OTLP exporter gave up on (the collector down or refusing them)."""
        return self.otlp_spans.undelivered if self.otlp_spans is not None else 0


def _serve_prometheus() -> tuple[tuple[WSGIServer, threading.Thread], MetricReader, str]:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import CollectorRegistry, start_http_server

    host = _env("OTEL_EXPORTER_PROMETHEUS_HOST") or PROMETHEUS_HOST_DEFAULT
    raw_port = _env("OTEL_EXPORTER_PROMETHEUS_PORT") or str(PROMETHEUS_PORT_DEFAULT)
    if not raw_port.isdigit() or not 0 < int(raw_port) < 65536:
        raise TelemetryError(f"OTEL_EXPORTER_PROMETHEUS_PORT={raw_port!r} is not a port number")
    # A registry of our own, so nothing is left registered in prometheus_client's global one.
    registry = CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry)
    try:
        server = start_http_server(int(raw_port), addr=host, registry=registry)
    except OSError as error:
        reader.shutdown()
        raise TelemetryError(f"cannot serve metrics on {host}:{raw_port}: {error}") from error
    return server, reader, f"http://{host}:{raw_port}/metrics"
