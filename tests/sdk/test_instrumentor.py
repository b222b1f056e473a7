"""The instrumentor's life cycle, its dependency pin, and the patch targets it relies on (drift)."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import logging

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from packaging.requirements import Requirement

from exo_otel.core.ids import RunIdGenerator
from exo_otel.core.patches import Patch, is_ours
from exo_otel.sdk.config import PlacementMode
from exo_otel.sdk.instrumentor import CPU_TIME_PATCHES, PATCHES, REQUEST_PATCH, ExosphereInstrumentor
from exo_otel.sdk.package import _instruments
from exo_otel.sdk.request_headers import add_headers, stop_adding
from exo_otel.sdk.telemetry import Telemetry


def _target(module_name: str, attribute: str) -> object:
    # getattr_static: the attribute as stored on its class, not bound through a descriptor.
    owner: object = importlib.import_module(module_name)
    for part in attribute.split("."):
        owner = inspect.getattr_static(owner, part)
    return owner


def _wrapped_flags(patches: tuple[Patch[Telemetry], ...] = PATCHES + CPU_TIME_PATCHES) -> list[bool]:
    # A wrapt proxy, or a plain function wrapper (`Patch.plain`), either of exo_otel's.
    return [is_ours(_target(p.module, p.attribute)) for p in patches]


def test_every_patch_target_exists_in_the_installed_sdk() -> None:
    # Drift: the targets are (partly private) methods of a 0.0.x SDK; a release that renames one
    # must fail here, loudly, not silently lose spans.
    for patch in (*PATCHES, *CPU_TIME_PATCHES, REQUEST_PATCH):
        target = _target(patch.module, patch.attribute)
        assert callable(target), f"{patch.target} is gone or not callable"
        # ... and takes the parameters its wrapper reads.
        assert patch.problem(importlib.import_module(patch.module)) is None


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
        ExosphereInstrumentor().instrument(placement="sometimes")
    with pytest.raises(ValueError):
        ExosphereInstrumentor().instrument(io_max_length=0)
    assert not any(_wrapped_flags())


def test_bad_environment_settings_fall_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from exo_otel.sdk.config import Settings

    monkeypatch.setenv("OTEL_PYTHON_EXOSPHERE_PLACEMENT", "sometimes")
    monkeypatch.setenv("OTEL_PYTHON_EXOSPHERE_CAPTURE_IO", "maybe")
    with caplog.at_level(logging.WARNING):
        settings = Settings.resolve()
    assert settings.placement is PlacementMode.AUTO
    assert settings.capture_io is False
    assert "OTEL_PYTHON_EXOSPHERE_PLACEMENT='sometimes' is not one of" in caplog.text
    monkeypatch.setenv("OTEL_PYTHON_EXOSPHERE_PLACEMENT", "payload")
    assert Settings.resolve().placement is PlacementMode.PAYLOAD
    assert Settings.resolve(placement="run_api").placement is PlacementMode.RUN_API


def test_old_setting_names_still_work_with_a_deprecation_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from exo_otel.sdk import config

    monkeypatch.setenv("OTEL_PYTHON_EXOSPHERE_RUN_ASSOCIATION", "payload")
    with caplog.at_level(logging.WARNING):
        assert config.Settings.resolve().placement is PlacementMode.PAYLOAD
    deprecated = "OTEL_PYTHON_EXOSPHERE_RUN_ASSOCIATION is deprecated: set OTEL_PYTHON_EXOSPHERE_PLACEMENT"
    assert deprecated in caplog.text
    monkeypatch.setenv("OTEL_PYTHON_EXOSPHERE_PLACEMENT", "none")  # the new name wins
    assert config.Settings.resolve().placement is PlacementMode.NONE
    with pytest.warns(DeprecationWarning, match="use PlacementMode"):
        assert config.RunAssociation is PlacementMode
    instrumentor = ExosphereInstrumentor()
    with pytest.warns(DeprecationWarning, match="use placement="):
        instrumentor.instrument(tracer_provider=TracerProvider(), run_association="run_api")
    try:
        assert instrumentor._telemetry.settings.placement is PlacementMode.RUN_API
    finally:
        instrumentor.uninstrument()


def test_no_op_and_foreign_providers_are_accepted() -> None:
    class ForeignProvider(trace.TracerProvider):
        def get_tracer(self, *args: object, **kwargs: object) -> trace.Tracer:
            return trace.NoOpTracer()

    for provider in (trace.NoOpTracerProvider(), ForeignProvider()):
        instrumentor = ExosphereInstrumentor()
        instrumentor.instrument(tracer_provider=provider, cpu_time=True)
        assert all(_wrapped_flags())
        instrumentor.uninstrument()


def test_a_target_of_another_shape_is_logged_and_left_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # An SDK release whose _get_secrets takes other parameters: wrapping it would misread its calls.
    import exospherehost.runtime

    async def _get_secrets(self: object, state: object, extra: object) -> dict[str, str]:
        return {}

    monkeypatch.setattr(exospherehost.runtime.Runtime, "_get_secrets", _get_secrets)
    shaped = [p for p in PATCHES if p.attribute != "Runtime._get_secrets"]
    instrumentor = ExosphereInstrumentor()
    with caplog.at_level(logging.WARNING, logger="exo_otel"):
        instrumentor.instrument(tracer_provider=TracerProvider())
    try:
        assert "exospherehost.runtime.Runtime._get_secrets takes ('self', 'state', 'extra')" in caplog.text
        assert exospherehost.runtime.Runtime._get_secrets is _get_secrets
        assert all(_wrapped_flags(tuple(shaped)))
    finally:
        instrumentor.uninstrument()
    assert not any(_wrapped_flags(tuple(shaped)))
    assert exospherehost.runtime.Runtime._get_secrets is _get_secrets


async def test_requests_are_wrapped_only_once_a_call_adds_headers() -> None:
    # A runtime with CPU time off adds no header to any request: aiohttp stays unwrapped for it.
    from aiohttp import ClientSession, web

    from helpers.http_proxy import serve_loopback

    seen: list[str | None] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(request.headers.get("x-exo-otel-test"))
        return web.Response(text="ok")

    instrumentor = ExosphereInstrumentor()
    instrumentor.instrument(tracer_provider=TracerProvider())
    try:
        async with serve_loopback(echo) as uri, ClientSession() as session:
            assert not _wrapped_flags((REQUEST_PATCH,))[0]
            async with session.get(uri) as answer:
                assert await answer.text() == "ok"
            token = add_headers({"x-exo-otel-test": "added"})
            try:
                assert _wrapped_flags((REQUEST_PATCH,))[0]
                async with session.get(uri) as answer:
                    assert await answer.text() == "ok"
            finally:
                stop_adding(token)
            async with session.get(uri) as answer:
                assert await answer.text() == "ok"
        assert seen == [None, "added", None]
    finally:
        instrumentor.uninstrument()
    assert not _wrapped_flags((REQUEST_PATCH,))[0]
    instrumentor.instrument(tracer_provider=TracerProvider())
    try:
        assert not _wrapped_flags((REQUEST_PATCH,))[0]  # installed again only on need
    finally:
        instrumentor.uninstrument()
