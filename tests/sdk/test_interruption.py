"""Cancellation and BaseException in node code: the spans end, the gauge comes back, the exception is kept."""

from __future__ import annotations

import asyncio
import threading

import pytest
from exospherehost import Runtime
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from exo_otel_demo.embedded import EmbeddedStateManager
from helpers.hostile_nodes import NAMESPACE, HangNode, RaiseNode, inflight, upsert_one_node_graph
from helpers.sm_fixtures import POLL_INTERVAL, running_runtime, sdk_state_manager, wait_until


async def test_a_cancelled_runtime_ends_the_spans_of_its_states_in_flight(
    instrumentor: ExosphereInstrumentor,
    span_exporter: InMemorySpanExporter,
    metric_reader: InMemoryMetricReader,
    state_manager: EmbeddedStateManager,
) -> None:
    HangNode.started = 0
    client = sdk_state_manager(state_manager, NAMESPACE)
    async with running_runtime(state_manager, NAMESPACE, [HangNode]):
        await upsert_one_node_graph(client, "hang", HangNode)
        for text in ("a", "b"):
            await client.trigger("hang", store={"text": text})
        await wait_until(lambda: HangNode.started == 2)
        assert inflight(metric_reader) == 2
    # running_runtime cancelled the runtime's task: both states were in flight.
    spans = [s for s in span_exporter.get_finished_spans() if s.name in ("node only", "execute HangNode")]
    assert len(spans) == 4, [s.name for s in span_exporter.get_finished_spans()]
    for span in spans:
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes is not None
        assert span.attributes["error.type"] == "asyncio.exceptions.CancelledError"
        assert span.attributes["exosphere.state.outcome"] == "interrupted"
    assert inflight(metric_reader) == 0


def _run_in_own_loop() -> BaseException | None:
    """Run a runtime whose node raises ``exception`` in a loop of its own; what the runtime raised."""

    async def scenario() -> None:
        async with EmbeddedStateManager() as sm:
            client = sdk_state_manager(sm, NAMESPACE)
            runtime = Runtime(
                namespace=NAMESPACE, name="raising", nodes=[RaiseNode], state_manager_uri=sm.uri,
                key=sm.api_key, workers=1, poll_interval=POLL_INTERVAL,  # type: ignore[arg-type]
            )
            task = runtime.start()
            assert task is not None
            await wait_until(lambda: task.done() or "RaiseNode" in sm.registered_nodes(NAMESPACE))
            await upsert_one_node_graph(client, "raise", RaiseNode)
            await client.trigger("raise", store={"text": "x"})
            await asyncio.wait_for(task, timeout=10)

    caught: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(scenario())
        except BaseException as exc:  # what escaped the runtime, whatever it is
            caught.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(timeout=30)
    return caught[0] if caught else None


@pytest.mark.parametrize(
    "exception",
    [KeyboardInterrupt("stop"), SystemExit(3), GeneratorExit(), asyncio.CancelledError("from node")],
    ids=lambda e: type(e).__name__,
)
def test_a_base_exception_in_node_code_ends_the_spans_and_propagates_unchanged(
    instrumentor: ExosphereInstrumentor,
    span_exporter: InMemorySpanExporter,
    metric_reader: InMemoryMetricReader,
    exception: BaseException,
) -> None:
    RaiseNode.to_raise = exception
    try:
        escaped = _run_in_own_loop()
    finally:
        RaiseNode.to_raise = None
    if isinstance(exception, asyncio.CancelledError):
        # A worker that raises CancelledError ends cancelled: the runtime's task is cancelled.
        assert isinstance(escaped, asyncio.CancelledError)
    else:
        assert escaped is exception
    spans = [s for s in span_exporter.get_finished_spans() if s.name in ("node only", "execute RaiseNode")]
    assert sorted(s.name for s in spans) == ["execute RaiseNode", "node only"]
    expected_type = {"CancelledError": "asyncio.exceptions.CancelledError"}.get(
        type(exception).__name__, type(exception).__name__
    )
    for span in spans:
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes is not None
        assert span.attributes["error.type"] == expected_type
    assert inflight(metric_reader) == 0
