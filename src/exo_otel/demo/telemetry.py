"""The demo's own tracer and meter providers: spans kept in memory, plus OTLP or Prometheus per OTEL_*."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Final
from wsgiref.simple_server import WSGIServer

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exo_otel.core.ids import RunIdGenerator, trace_id_for_run

OTLP_PROTOCOLS: Final = ("grpc", "http/protobuf")
PROMETHEUS_HOST_DEFAULT: Final = "127.0.0.1"
"""Loopback unless ``OTEL_EXPORTER_PROMETHEUS_HOST`` says otherwise: the demo serves no one else."""
PROMETHEUS_PORT_DEFAULT: Final = 9464


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


def _otlp_span_exporter() -> SpanExporter:
    # The standard exporters read the endpoint, headers, timeout and TLS settings from OTEL_* themselves.
    if _protocol("TRACES") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc

        return Grpc()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

    return Http()


def _otlp_metric_exporter() -> MetricExporter:
    if _protocol("METRICS") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as Grpc

        return Grpc()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as Http

    return Http()


@dataclass
class DemoTelemetry:
    """The demo's own providers (never the global ones) and where their data goes."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    spans: InMemorySpanExporter
    notes: list[str] = field(default_factory=list)
    metrics_server: tuple[WSGIServer, threading.Thread] | None = None

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
        if endpoint and "otlp" in _exporters("OTEL_TRACES_EXPORTER", "otlp"):
            tracer_provider.add_span_processor(BatchSpanProcessor(_otlp_span_exporter()))
            notes.append(f"spans: OTLP ({_protocol('TRACES')}) to {endpoint}")
        if endpoint and "otlp" in metric_exporters:
            readers.append(PeriodicExportingMetricReader(_otlp_metric_exporter()))
            notes.append(f"metrics: OTLP ({_protocol('METRICS')}) to {endpoint}")
        server = None
        if prometheus if prometheus is not None else "prometheus" in metric_exporters:
            server, reader, url = _serve_prometheus()
            readers.append(reader)
            notes.append(f"metrics: Prometheus exposition on {url}")
        meter_provider = MeterProvider(metric_readers=readers, resource=resource, shutdown_on_exit=False)
        return cls(tracer_provider, meter_provider, spans, notes, server)

    def describe(self) -> list[str]:
        return list(self.notes)

    def serving_note(self) -> str:
        served = [note.split(" on ", 1)[1] for note in self.notes if "Prometheus" in note]
        return f" (metrics on {served[0]})" if served else ""

    def run_spans(self, run_id: str) -> list[ReadableSpan]:
        """The finished spans of the run's trace."""
        trace_id = trace_id_for_run(run_id)
        return [s for s in self.spans.get_finished_spans() if s.context and s.context.trace_id == trace_id]

    def shutdown(self) -> None:
        """Flush and stop the exporters and the metrics server; leaves no thread behind."""
        self.tracer_provider.shutdown()
        if self.metrics_server is not None:
            server, thread = self.metrics_server
            server.shutdown()
            server.server_close()
            thread.join()
        self.meter_provider.shutdown()


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
