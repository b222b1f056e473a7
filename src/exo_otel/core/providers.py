"""Making a tracer provider pin exo_otel's ids: install (and remove) a `RunIdGenerator` on it."""

from __future__ import annotations

import logging

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider

from exo_otel.core.ids import RunIdGenerator

_logger = logging.getLogger(__name__)

InstalledGenerator = tuple[SdkTracerProvider, RunIdGenerator]


def install_run_id_generator(provider: object) -> InstalledGenerator | None:
    """Make an SDK provider's id generator a `RunIdGenerator` (before any tracer is taken from it).

    Returns what to undo, or None when there is nothing to undo (not an SDK provider, or the
    generator was a RunIdGenerator already, e.g. from ``OTEL_PYTHON_ID_GENERATOR=exosphere``).
    """
    if not isinstance(provider, SdkTracerProvider):
        _logger.debug("exo_otel: %r is not an SDK TracerProvider; run ids cannot pin trace ids", provider)
        return None
    if isinstance(provider.id_generator, RunIdGenerator):
        return None
    generator = RunIdGenerator(provider.id_generator)
    # setattr: the SDK annotates the attribute with the type of its default generator.
    setattr(provider, "id_generator", generator)  # noqa: B010
    return provider, generator


def remove_run_id_generator(installed: InstalledGenerator | None) -> None:
    """Undo `install_run_id_generator` (only if nobody replaced the generator since)."""
    if installed is None:
        return
    provider, generator = installed
    current: object = provider.id_generator
    if current is generator:
        setattr(provider, "id_generator", generator.delegate)  # noqa: B010


def flush_spans(provider: object | None, timeout_ms: int) -> bool:
    """Export the spans ``provider`` (the global one when None, as it is now) holds, within
    ``timeout_ms``; True when it finished, or has nothing to flush (not the SDK's)."""
    if provider is None:
        provider = trace.get_tracer_provider()
    flush = getattr(provider, "force_flush", None)
    return bool(flush(timeout_ms)) if callable(flush) else True
