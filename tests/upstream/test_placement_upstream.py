"""Run-API placement against the real upstream state manager without the state manager side: 1, 10, 50
and 200 runs of the 11-state placement graph in flight. Placement must reach 99% at 1 run and 95% at 10;
at 50 and 200 it is measured and printed. At every level no parent or link names a span that was not
emitted, no span id is emitted twice, and every state ran exactly once (the re-enqueued one twice)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from helpers.otel_fixtures import instrumented
from helpers.placement_load import run_load
from helpers.upstream_sm import UpstreamServer, upstream_state_manager

pytestmark = pytest.mark.upstream

MINIMUM_PLACED = {1: 0.99, 10: 0.95}


@pytest.fixture(scope="module")
def quiet_upstream() -> Iterator[UpstreamServer]:
    """A server of its own without the status history tap (a full scan per write; too slow at 200 runs)."""
    with upstream_state_manager(history=False) as server:
        yield server


@pytest.fixture
def run_api_only(tracer_provider: TracerProvider) -> Iterator[ExosphereInstrumentor]:
    with instrumented(tracer_provider=tracer_provider, placement="run_api") as instrumentor:
        yield instrumentor


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("runs", [1, 10, 50, pytest.param(200, marks=pytest.mark.long_load)])
async def test_placement_at_load_on_upstream(
    quiet_upstream: UpstreamServer,
    span_exporter: InMemorySpanExporter,
    run_api_only: ExosphereInstrumentor,
    runs: int,
) -> None:
    result = await run_load(quiet_upstream.uri, quiet_upstream.api_key, runs, span_exporter, timeout_s=1500)
    print(result.line("upstream, no state manager side: "))
    assert result.states == 11 * runs
    assert result.placed_ratio >= MINIMUM_PLACED.get(runs, 0.0)
    assert result.dangling_parents == 0
    assert result.missing_links == 0
    assert result.duplicate_span_ids == 0
    assert result.executions == result.expected_executions
    assert result.states_executed_twice == runs  # the re-enqueued work state of each run, nothing else
