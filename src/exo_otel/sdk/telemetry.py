"""What the wrappers close over: the tracer, the metric instruments, the settings and the sampler."""

from __future__ import annotations

from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.sdk.trace.sampling import Sampler

from exo_otel.core.metrics import ExosphereMetrics
from exo_otel.sdk.config import Settings


@dataclass
class Telemetry:
    """One `instrument()` call's view of OpenTelemetry.

    ``sampler`` is the SDK provider's sampler, asked by a runtime what the trigger side decided
    for a run; None when the provider is not the SDK's (then a run's remote parent counts as sampled).
    """

    tracer: trace.Tracer
    metrics: ExosphereMetrics
    settings: Settings
    sampler: Sampler | None = None
    # Cleared by uninstrument: runtimes made while instrumented keep their traced queue, which
    # then passes states through untouched.
    enabled: bool = True
