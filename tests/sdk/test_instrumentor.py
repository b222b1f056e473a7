"""The instrumentor's life cycle, its dependency pin, and the patch targets it relies on (drift)."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import logging

import pytest
import wrapt
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from packaging.requirements import Requirement

from exo_otel.core.ids import RunIdGenerator
from exo_otel.sdk.config import RunAssociation
from exo_otel.sdk.instrumentor import CPU_TIME_PATCHES, PATCHES, ExosphereInstrumentor, Patch
from exo_otel.sdk.package import _instruments


def _target(module_name: str, attribute: str) -> object:
    # getattr_static: the attribute as stored on its class, not bound through a descriptor.
    owner: object = importlib.import_module(module_name)
    for part in attribute.split("."):
        owner = inspect.getattr_static(owner, part)
    return owner


def _wrapped_flags(patches: tuple[Patch, ...] = PATCHES + CPU_TIME_PATCHES) -> list[bool]:
    return [isinstance(_target(m, a), wrapt.FunctionWrapper) for m, a, _ in patches]


def test_every_patch_target_exists_in_the_installed_sdk() -> None:
    # Drift: the targets are (partly private) methods of a 0.0.x SDK; a release that renames one
    # must fail here, loudly, not silently lose spans.
    for module_name, attribute, _factory in PATCHES + CPU_TIME_PATCHES:
        target = _target(module_name, attribute)
        assert callable(target), f"{module_name}.{attribute} is gone or not callable"


def test_instruments_extras_match_instrumentation_dependencies() -> None:
    requires = importlib.metadata.requires("exo-otel") or []

    def extra(name: str) -> set[tuple[str, object]]:
        return {
            (r.name, r.specifier)
            for r in map(Requirement, requires)
            if r.marker is not None and r.marker.evaluate({"extra": name})
        }

    sdk = {(r.name, r.specifier) for r in map(Requirement, _instruments)}
    assert extra("sdk") == sdk
    # The launcher checks `instruments-any`: the SDK, or the state manager (beanie) for the server side.
    assert extra("instruments-any") == sdk | {("beanie", Requirement("beanie >= 2.0").specifier)}
    # An `instruments` extra would make the launcher skip both sides where the SDK is absent.
    assert extra("instruments") == set()
    assert tuple(ExosphereInstrumentor().instrumentation_dependencies()) == _instruments


def test_instrument_uninstrument_instrument() -> None:
    provider = TracerProvider()
    instrumentor = ExosphereInstrumentor()
    assert not any(_wrapped_flags())
    instrumentor.instrument(tracer_provider=provider)
    # CPU time is off by default: the node call and the event loop's executor stay unwrapped.
    assert all(_wrapped_flags(PATCHES)) and not any(_wrapped_flags(CPU_TIME_PATCHES))
    assert isinstance(provider.id_generator, RunIdGenerator)
    instrumentor.instrument(tracer_provider=provider, cpu_time=True)  # a second call is harmless
    assert all(_wrapped_flags(PATCHES)) and not any(_wrapped_flags(CPU_TIME_PATCHES))
    instrumentor.uninstrument()
    assert not any(_wrapped_flags())
    assert isinstance(provider.id_generator, RandomIdGenerator)
    instrumentor.instrument(tracer_provider=provider, cpu_time=True)
    assert all(_wrapped_flags())
    instrumentor.uninstrument()
    assert not any(_wrapped_flags())
    instrumentor.instrument(tracer_provider=provider)
    assert all(_wrapped_flags(PATCHES)) and not any(_wrapped_flags(CPU_TIME_PATCHES))
    instrumentor.uninstrument()
    assert not any(_wrapped_flags())


def test_cpu_time_from_the_environment_wraps_the_cpu_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_PYTHON_EXOSPHERE_CPU_TIME", "true")
    instrumentor = ExosphereInstrumentor()
    instrumentor.instrument(tracer_provider=TracerProvider())
    try:
        assert all(_wrapped_flags())
    finally:
        instrumentor.uninstrument()
    assert not any(_wrapped_flags())


def test_a_run_id_generator_already_installed_is_kept() -> None:
    generator = RunIdGenerator()
    provider = TracerProvider(id_generator=generator)
    instrumentor = ExosphereInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        assert provider.id_generator is generator
    finally:
        instrumentor.uninstrument()
    assert provider.id_generator is generator


def test_bad_explicit_settings_raise_and_install_nothing() -> None:
    with pytest.raises(ValueError):
        ExosphereInstrumentor().instrument(run_association="sometimes")
    with pytest.raises(ValueError):
        ExosphereInstrumentor().instrument(io_max_length=0)
    assert not any(_wrapped_flags())


def test_bad_environment_settings_fall_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from exo_otel.sdk.config import Settings

    monkeypatch.setenv("OTEL_PYTHON_EXOSPHERE_RUN_ASSOCIATION", "sometimes")
    monkeypatch.setenv("OTEL_PYTHON_EXOSPHERE_CAPTURE_IO", "maybe")
    with caplog.at_level(logging.WARNING):
        settings = Settings.resolve()
    assert settings.run_association is RunAssociation.AUTO
    assert settings.capture_io is False
    assert "OTEL_PYTHON_EXOSPHERE_RUN_ASSOCIATION" in caplog.text
    monkeypatch.setenv("OTEL_PYTHON_EXOSPHERE_RUN_ASSOCIATION", "payload")
    assert Settings.resolve().run_association is RunAssociation.PAYLOAD
    assert Settings.resolve(run_association="run_api").run_association is RunAssociation.RUN_API


def test_no_op_and_foreign_providers_are_accepted() -> None:
    class ForeignProvider(trace.TracerProvider):
        def get_tracer(self, *args: object, **kwargs: object) -> trace.Tracer:
            return trace.NoOpTracer()

    for provider in (trace.NoOpTracerProvider(), ForeignProvider()):
        instrumentor = ExosphereInstrumentor()
        instrumentor.instrument(tracer_provider=provider, cpu_time=True)
        assert all(_wrapped_flags())
        instrumentor.uninstrument()
