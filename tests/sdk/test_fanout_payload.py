"""Fan-out copies when the enqueue answer carries the run (payload placement): the worker that reports the
fan-out never waits for the run graph that names the copies; with healthy run APIs the copies get spans
(in the background) and their children link to them; with hanging run APIs nothing links to them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exo_otel.core.ids import state_span_id
from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from exo_otel_demo.embedded import EmbeddedStateManager
from helpers.http_proxy import RunApiMode
from helpers.otel_fixtures import instrumented
from helpers.placement_load import run_load


@pytest.fixture
def payload_first(tracer_provider: TracerProvider) -> Iterator[ExosphereInstrumentor]:
    with instrumented(tracer_provider=tracer_provider, placement="auto") as instrumentor:
        yield instrumentor


@pytest.mark.parametrize("run_api", ["pass", "timeout"])
async def test_fan_out_in_payload_mode_never_blocks_the_worker(
    state_manager_with_context: EmbeddedStateManager,
    span_exporter: InMemorySpanExporter,
    payload_first: ExosphereInstrumentor,
    run_api: RunApiMode,
) -> None:
    sm = state_manager_with_context
    result = await run_load(sm.uri, sm.api_key, 3, span_exporter, run_api=run_api, hang_s=60.0)
    print(result.line(f"payload placement, run APIs {run_api}: "))
    spans = span_exporter.get_finished_spans()
    # The run graph call never answers when hanging (the lookup gives up after 2 s): had the worker
    # waited for it, reporting split's outputs would have taken that long.
    for split in [s for s in spans if s.name == "execute Split"]:
        assert split.end_time is not None and split.start_time is not None
        assert (split.end_time - split.start_time) / 1e9 < 1.0
    assert result.dangling_parents == result.missing_links == result.duplicate_span_ids == 0
    assert result.executions == result.expected_executions
    copies = [s for s in spans if "exosphere.state.fanout_of" in (s.attributes or {})]
    work_links = {
        link.context.span_id for s in spans if s.name == "node work" for link in s.links
    }
    if run_api == "pass":
        assert result.placed == result.states  # copies included
        assert len(copies) == 2 * 3
        # Every work state links to its split state, the copies included.
        assert {state_span_id(str((c.attributes or {})["exosphere.state.id"])) for c in copies} <= work_links
    else:
        assert result.placed == result.states - 2 * 3  # the copies have no span: no graph named them
        assert copies == []
        assert len(work_links) == 3  # only the work states under the original split link to it
