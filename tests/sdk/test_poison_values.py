"""Poison values from outside: every span stays encodable, and one bad state costs no other span."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exo_otel.core.ids import format_trace_id, state_span_id, trace_id_for_run
from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from exo_otel_demo.embedded import EmbeddedStateManager
from helpers.hostile_nodes import NAMESPACE, RaiseNode, encode_all, runtime_via, upsert_one_node_graph
from helpers.mutating_proxy import mutating_proxy
from helpers.sm_fixtures import sdk_state_manager, wait_for_run, wait_until

LONE = "\ud800"


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(state: dict[str, Any]) -> None:
        state[key] = value

    return mutate


POISONS = {
    "created_at before 1970": _set("created_at", "1960-05-01T00:00:00"),
    "created_at in year 1": _set("created_at", "0001-01-01T00:00:00"),
    "created_at far future": _set("created_at", "9999-12-31T23:59:59"),
    "lone surrogate in identifier": _set("identifier", f"only{LONE}"),
    "lone surrogate in graph_name": _set("graph_name", f"graph{LONE}"),
    "lone surrogate in run_id": lambda state: state.update(run_id=state["run_id"] + LONE),
    "newline and surrogate in parents": _set("parents", {"x": f"p\n{LONE}"}),
}


@pytest.mark.parametrize("poison", list(POISONS), ids=list(POISONS))
async def test_a_poison_value_never_costs_a_span_nor_a_batch(
    instrumentor: ExosphereInstrumentor, span_exporter: InMemorySpanExporter, poison: str
) -> None:
    async with EmbeddedStateManager(expose_run_context=True) as sm, mutating_proxy(sm.uri) as proxy:
        client = sdk_state_manager(sm, NAMESPACE)
        async with runtime_via(proxy.uri, sm, [RaiseNode]):
            await upsert_one_node_graph(client, "poison", RaiseNode)
            healthy = (await client.trigger("poison", store={"text": "healthy"}))["run_id"]
            assert await wait_for_run(sm, healthy) == "SUCCESS"
            await wait_until(lambda: len(_state_spans(span_exporter)) == 2)
            proxy.mutate = POISONS[poison]
            poisoned = (await client.trigger("poison", store={"text": "poisoned"}))["run_id"]
            assert await wait_for_run(sm, poisoned) == "SUCCESS"
            await wait_until(lambda: len(_state_spans(span_exporter)) == 4)
    spans = span_exporter.get_finished_spans()
    assert encode_all(spans) == []
    # One batch with every span, the way a BatchSpanProcessor exports them.
    encode_spans(spans).SerializeToString()
    [poisoned_state] = sm.states(poisoned)
    span_id = state_span_id(poisoned_state.id)
    node = [s for s in spans if s.context is not None and s.context.span_id == span_id]
    assert len(node) == 1 and node[0].start_time is not None and node[0].start_time > 0
    assert {s.context.trace_id for s in spans if s.context is not None} >= {trace_id_for_run(healthy)}


def _state_spans(exporter: InMemorySpanExporter) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith(("node ", "execute "))]


def test_the_trace_id_of_a_run_id_with_lone_surrogates_is_computed() -> None:
    assert len(format_trace_id(f"run{LONE}")) == 32


def test_the_cli_rejects_a_run_id_that_is_not_utf8_with_a_clear_error() -> None:
    exo_otel = Path(sys.executable).with_name("exo-otel")
    command = [exo_otel, "trace-id", b"\xff\xfeabc"]
    done = subprocess.run(command, capture_output=True, timeout=60, check=False)
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == 2, stderr
    assert "Traceback" not in stderr
    assert "UTF-8" in stderr
