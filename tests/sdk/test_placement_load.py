"""Run-API placement under load against the embedded state manager without the run context extension:
1 and 10 runs of the 11-state placement graph in flight (``benchmarks/placement_levels.py`` has more)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from exo_otel_demo.embedded import EmbeddedStateManager
from helpers.otel_fixtures import instrumented
from helpers.placement_load import run_load


@pytest.fixture
def run_api_only(tracer_provider: TracerProvider) -> Iterator[ExosphereInstrumentor]:
    with instrumented(tracer_provider=tracer_provider, placement="run_api") as instrumentor:
        yield instrumentor


@pytest.mark.parametrize(("runs", "minimum"), [(1, 0.99), (10, 0.95)])
async def test_placement_at_load(
    state_manager: EmbeddedStateManager,
    span_exporter: InMemorySpanExporter,
    run_api_only: ExosphereInstrumentor,
    runs: int,
    minimum: float,
) -> None:
    result = await run_load(state_manager.uri, state_manager.api_key, runs, span_exporter)
    print(result.line("embedded, no run context: "))
    assert result.states == 11 * runs
    assert result.placed_ratio >= minimum
    assert result.dangling_parents == 0
    assert result.missing_links == 0
    assert result.duplicate_span_ids == 0
    assert result.executions == result.expected_executions
    assert result.states_executed_twice == runs  # the re-enqueued work state of each run, nothing else
