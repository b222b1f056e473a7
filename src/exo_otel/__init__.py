"""OpenTelemetry instrumentation for Exosphere: one trace per graph run, derived from the run id."""

from __future__ import annotations

from exo_otel.ids import (
    RunIdGenerator,
    format_trace_id,
    h64,
    run_id_for_trace,
    run_span_id,
    state_span_id,
    trace_id_for_run,
)
from exo_otel.version import __version__

__all__ = [
    "RunIdGenerator",
    "__version__",
    "format_trace_id",
    "h64",
    "run_id_for_trace",
    "run_span_id",
    "state_span_id",
    "trace_id_for_run",
]
