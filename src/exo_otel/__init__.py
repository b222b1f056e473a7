"""OpenTelemetry instrumentation for Exosphere: one trace per graph run, derived from the run id.

Usage::

    from opentelemetry.sdk.trace import TracerProvider

    from exo_otel import ExosphereInstrumentor, format_trace_id

    provider = TracerProvider()
    ExosphereInstrumentor().instrument(tracer_provider=provider)
    print(format_trace_id("9d2c6f0e-3b1a-4c5d-8e7f-001122334455"))
    ExosphereInstrumentor().uninstrument()

Under the ``opentelemetry-instrument`` launcher nothing is needed: the entry point ``exospherehost``
loads the instrumentor.

Parts: `exo_otel.core` (the tracing core both sides share), `exo_otel.sdk` (the SDK side:
`ExosphereInstrumentor`), `exo_otel.server` (the state manager side: `StateManagerInstrumentor`,
entry point ``exosphere_state_manager``). The embedded state manager and the demo are not part of this
distribution: they are ``exo-otel-demo`` (``demo/`` in the repository).
"""

from __future__ import annotations

from exo_otel.core.ids import (
    RunIdGenerator,
    format_trace_id,
    h64,
    run_id_for_trace,
    run_span_id,
    state_span_id,
    trace_id_for_run,
    trace_id_for_state,
)
from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from exo_otel.server.instrumentor import StateManagerInstrumentor
from exo_otel.version import __version__

__all__ = [
    "ExosphereInstrumentor",
    "RunIdGenerator",
    "StateManagerInstrumentor",
    "__version__",
    "format_trace_id",
    "h64",
    "run_id_for_trace",
    "run_span_id",
    "state_span_id",
    "trace_id_for_run",
    "trace_id_for_state",
]
