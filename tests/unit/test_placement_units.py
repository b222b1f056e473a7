"""Pieces of placement: state trace ids, the budget and wait settings, the unplaced counter and warning."""

from __future__ import annotations

import hashlib
import logging
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from exo_otel.core.ids import is_state_trace_id, run_id_for_trace, trace_id_for_run, trace_id_for_state
from exo_otel.core.metrics import RUNTIME_UNPLACED, ExosphereMetrics
from exo_otel.sdk.config import Settings
from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from exo_otel.sdk.placement import UnplacedReporter

STATE_IDS = st.text(alphabet="0123456789abcdef", min_size=24, max_size=24) | st.text(min_size=1)


@given(STATE_IDS)
def test_state_trace_id_is_a_pure_function_of_the_state_id(state_id: str) -> None:
    trace_id = trace_id_for_state(state_id)
    assert trace_id == trace_id_for_state(state_id)
    assert 0 < trace_id < 1 << 128
    digest = int.from_bytes(hashlib.sha256(f"exosphere.state-trace:{state_id}".encode()).digest()[:16], "big")
    # The low 64 bits (what ratio samplers read) are the hash's, untouched.
    assert trace_id & ((1 << 64) - 1) == digest & ((1 << 64) - 1)
    assert is_state_trace_id(trace_id)
    assert run_id_for_trace(trace_id) is None


def _uuid7(value: int) -> uuid.UUID:
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    return uuid.UUID(int=(value & ~(0x3 << 62)) | (0x2 << 62))  # RFC 4122 variant


UUID7 = st.integers(min_value=0, max_value=(1 << 128) - 1).map(_uuid7)


@given(st.uuids(version=4) | UUID7 | st.text(min_size=1))
def test_run_traces_never_look_like_state_traces(run_id: uuid.UUID | str) -> None:
    assert not is_state_trace_id(trace_id_for_run(str(run_id)))


def test_budget_and_wait_settings(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    assert (Settings.resolve().run_api_budget, Settings.resolve().placement_wait_ms) == (50.0, 250)
    monkeypatch.setenv("OTEL_PYTHON_EXOSPHERE_RUN_API_BUDGET", "7.5")
    monkeypatch.setenv("OTEL_PYTHON_EXOSPHERE_PLACEMENT_WAIT_MS", "40")
    assert (Settings.resolve().run_api_budget, Settings.resolve().placement_wait_ms) == (7.5, 40)
    # Explicit arguments win.
    assert Settings.resolve(run_api_budget=0, placement_wait_ms=0).run_api_budget == 0.0
    # Bad environment values are logged and the defaults used; bad arguments raise.
    monkeypatch.setenv("OTEL_PYTHON_EXOSPHERE_RUN_API_BUDGET", "lots")
    monkeypatch.setenv("OTEL_PYTHON_EXOSPHERE_PLACEMENT_WAIT_MS", "-3")
    with caplog.at_level(logging.WARNING):
        settings = Settings.resolve()
    assert (settings.run_api_budget, settings.placement_wait_ms) == (50.0, 250)
    assert "OTEL_PYTHON_EXOSPHERE_RUN_API_BUDGET" in caplog.text
    assert "OTEL_PYTHON_EXOSPHERE_PLACEMENT_WAIT_MS" in caplog.text
    for bad in ({"run_api_budget": -1.0}, {"run_api_budget": float("inf")}, {"placement_wait_ms": -1}):
        with pytest.raises(ValueError):
            ExosphereInstrumentor().instrument(**bad)  # type: ignore[arg-type]


def test_unplaced_states_are_counted_and_warned_about_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    reporter = UnplacedReporter(ExosphereMetrics.create(provider.get_meter("test")), interval_s=3600)
    attributes = {"exosphere.namespace": "ns", "exosphere.node.name": "Node"}
    with caplog.at_level(logging.WARNING, logger="exo_otel"):
        for _ in range(5):
            reporter.report(attributes)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "1 state(s) of namespace ns" in message
    assert "exosphere_state_manager" in message and "StateManagerInstrumentor" in message
    data = reader.get_metrics_data()
    assert data is not None
    (point,) = [
        p for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
        if m.name == RUNTIME_UNPLACED for p in m.data.data_points  # type: ignore[union-attr]
    ]
    assert point.value == 5  # type: ignore[union-attr]
    assert dict(point.attributes or {}) == attributes
    provider.shutdown()
