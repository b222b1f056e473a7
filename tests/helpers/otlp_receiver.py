"""In-test OTLP receivers (HTTP/protobuf and gRPC) on 127.0.0.1 that collect decoded spans and metrics.

Usage::

    with OtlpHttpReceiver() as rx:          # or OtlpGrpcReceiver()
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint}
        ...
        spans = rx.wait_for(lambda rx: len(rx.spans()) >= 3, timeout=10)
"""

from __future__ import annotations

import gzip
import http.server
import threading
import time
import zlib
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

T = TypeVar("T")


@dataclass(frozen=True)
class Span:
    """One received span, flattened; ids as lowercase hex."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: int  # proto SpanKind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer
    attributes: dict[str, Any]
    links: list[tuple[str, str]]  # (trace_id, span_id)
    status_code: int  # 0 unset, 1 ok, 2 error
    status_message: str
    start_ns: int
    end_ns: int
    service_name: str | None
    events: list[str] = field(default_factory=list)
    process_pid: int | None = None  # the resource's process.pid, where the exporter's resource has it
    # When the export request carrying it reached the receiver (time.time_ns()); None for spans not
    # received over OTLP (`trace_checks.flatten`).
    received_ns: int | None = None
    # Its size in the export request as the exporter encoded it (the span message with its field tag
    # and length); 0 for spans not received over OTLP.
    wire_bytes: int = 0


@dataclass(frozen=True)
class MetricPoint:
    """One received metric data point (sum, gauge or histogram)."""

    name: str
    attributes: dict[str, Any]
    exemplar_trace_ids: list[str]
    service_name: str | None
    value: float | None = None  # sum/gauge value, or histogram count
    total: float | None = None  # a histogram's sum


@dataclass(frozen=True)
class LogRecord:
    body: Any
    trace_id: str  # 32 hex, or "" outside a span
    span_id: str
    attributes: dict[str, Any]


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attrs(value.kvlist_value.values)
    return getattr(value, kind) if kind else None


def _wire_size(size: int) -> int:
    """A message of ``size`` bytes in a repeated field: one tag byte, its varint length, itself."""
    length = 1
    while size >= 1 << (7 * length):
        length += 1
    return 1 + length + size


def _attrs(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


def _service(resource_attributes: list[KeyValue]) -> str | None:
    name = _attrs(resource_attributes).get("service.name")
    return str(name) if name is not None else None


class _Collector:
    """The decoded telemetry and a condition to wait on; shared by both receivers."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._spans: list[Span] = []
        self._points: list[MetricPoint] = []
        self._logs: list[LogRecord] = []

    def spans(self) -> list[Span]:
        with self._cond:
            return list(self._spans)

    @property
    def log_records(self) -> int:
        with self._cond:
            return len(self._logs)

    def logs(self) -> list[LogRecord]:
        with self._cond:
            return list(self._logs)

    def metric_points(self) -> list[MetricPoint]:
        with self._cond:
            return list(self._points)

    def wait_for(self, predicate: Callable[[Any], T], timeout: float = 10.0) -> T:
        """Block until ``predicate(self)`` is truthy and return it; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = predicate(self)
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"OTLP condition not met in {timeout}s; {len(self._spans)} spans, "
                        f"{len(self._points)} metric points received"
                    )
                # Condition() wraps an RLock, so the predicate may call spans() while we hold it.
                self._cond.wait(min(remaining, 0.1))

    def add_traces(
        self, request: trace_service_pb2.ExportTraceServiceRequest, received_ns: int | None = None
    ) -> None:
        received_ns = time.time_ns() if received_ns is None else received_ns
        decoded = []
        for rs in request.resource_spans:
            service = _service(list(rs.resource.attributes))
            pid = _attrs(list(rs.resource.attributes)).get("process.pid")
            for ss in rs.scope_spans:
                for s in ss.spans:
                    decoded.append(
                        Span(
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_span_id=s.parent_span_id.hex() or None,
                            name=s.name,
                            kind=s.kind,
                            attributes=_attrs(s.attributes),
                            links=[(link.trace_id.hex(), link.span_id.hex()) for link in s.links],
                            status_code=s.status.code,
                            status_message=s.status.message,
                            start_ns=s.start_time_unix_nano,
                            end_ns=s.end_time_unix_nano,
                            service_name=service,
                            events=[e.name for e in s.events],
                            process_pid=int(pid) if pid is not None else None,
                            received_ns=received_ns,
                            wire_bytes=_wire_size(s.ByteSize()),
                        )
                    )
        with self._cond:
            self._spans.extend(decoded)
            self._cond.notify_all()

    def add_metrics(self, request: metrics_service_pb2.ExportMetricsServiceRequest) -> None:
        decoded = []
        for rm in request.resource_metrics:
            service = _service(list(rm.resource.attributes))
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    kind = metric.WhichOneof("data")
                    if kind is None:
                        continue
                    for p in getattr(metric, kind).data_points:
                        total = None
                        if kind in ("histogram", "exponential_histogram"):
                            value: float | None = float(p.count)
                            total = float(p.sum)
                        else:
                            value = float(getattr(p, p.WhichOneof("value") or "as_double"))
                        decoded.append(
                            MetricPoint(
                                name=metric.name,
                                attributes=_attrs(p.attributes),
                                exemplar_trace_ids=[e.trace_id.hex() for e in p.exemplars if e.trace_id],
                                service_name=service,
                                value=value,
                                total=total,
                            )
                        )
        with self._cond:
            self._points.extend(decoded)
            self._cond.notify_all()

    def add_logs(self, request: logs_service_pb2.ExportLogsServiceRequest) -> None:
        decoded = [
            LogRecord(
                _value(record.body), record.trace_id.hex(), record.span_id.hex(), _attrs(record.attributes)
            )
            for rl in request.resource_logs
            for sl in rl.scope_logs
            for record in sl.log_records
        ]
        with self._cond:
            self._logs.extend(decoded)
            self._cond.notify_all()


class OtlpHttpReceiver(_Collector):
    """OTLP/HTTP (protobuf) receiver; ``endpoint`` is the base URL for OTEL_EXPORTER_OTLP_ENDPOINT."""

    def __init__(self) -> None:
        super().__init__()
        routes: dict[str, tuple[type[Any], Callable[[Any], None]]] = {
            "/v1/traces": (trace_service_pb2.ExportTraceServiceRequest, self.add_traces),
            "/v1/metrics": (metrics_service_pb2.ExportMetricsServiceRequest, self.add_metrics),
            "/v1/logs": (logs_service_pb2.ExportLogsServiceRequest, self.add_logs),
        }

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                route = routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                request_type, add = route
                add(request_type.FromString(body))
                # An empty Export*ServiceResponse (no partial_success) serializes to zero bytes.
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="otlp-http", daemon=True)

    def __enter__(self) -> OtlpHttpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class OtlpGrpcReceiver(_Collector):
    """OTLP/gRPC receiver (insecure); ``endpoint`` is ``http://127.0.0.1:PORT``."""

    def __init__(self) -> None:
        super().__init__()
        collector = self

        class Traces(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                collector.add_traces(request, time.time_ns())
                return trace_service_pb2.ExportTraceServiceResponse()

        class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                collector.add_metrics(request)
                return metrics_service_pb2.ExportMetricsServiceResponse()

        class Logs(logs_service_pb2_grpc.LogsServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                collector.add_logs(request)
                return logs_service_pb2.ExportLogsServiceResponse()

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), self._server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), self._server)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> OtlpGrpcReceiver:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop(grace=1).wait(5)
