"""`exo_otel.sdk.trigger`: the wrappers of `StateManager.trigger` and of the graph calls, called directly.

The wrapped call is a stand-in for the SDK method's HTTP request (no server): the wrapper gets it as
the instrumentor's patch would give it, with a real `StateManager` as the instance.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from exospherehost import StateManager
from opentelemetry import baggage, context, trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.metrics import Counter
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from exo_otel.core.ids import run_span_id, trace_id_for_run
from exo_otel.sdk.request_headers import make_request_headers_wrapper
from exo_otel.sdk.telemetry import Telemetry
from exo_otel.sdk.trigger import make_graph_call_wrapper, make_trigger_wrapper
from exo_otel.server.context import RunContext

RUN_ID = "9d2c6f0e-3b1a-4c5d-8e7f-001122334455"
NAMESPACE = "unit-ns"
GRAPH = "greet"


@pytest.fixture
def client() -> StateManager:
    return StateManager(namespace=NAMESPACE, state_manager_uri="http://127.0.0.1:9", key="k")


def answering(answer: Any, seen: list[float] | None = None) -> Callable[..., Any]:
    async def trigger(*args: Any, **kwargs: Any) -> Any:
        if seen is not None:
            seen.append(time.time_ns())
        return answer

    return trigger


def _only(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    [span] = [s for s in exporter.get_finished_spans() if s.name == name]
    return span


async def test_the_trigger_span_roots_the_runs_trace_backdated_to_the_call(
    telemetry: Telemetry, exporter: InMemorySpanExporter, client: StateManager
) -> None:
    answer = {"run_id": RUN_ID, "status": "CREATED"}
    entered: list[float] = []
    before = time.time_ns()
    result = await make_trigger_wrapper(telemetry)(
        answering(answer, entered), client, (GRAPH,), {"inputs": {"a": "b"}, "start_delay": 1500}
    )
    assert result is answer and result == {"run_id": RUN_ID, "status": "CREATED"}
    span = _only(exporter, f"trigger {GRAPH}")
    assert span.context is not None
    assert (span.context.trace_id, span.context.span_id) == (trace_id_for_run(RUN_ID), run_span_id(RUN_ID))
    assert span.parent is None and span.kind is SpanKind.PRODUCER
    assert span.start_time is not None and before <= span.start_time <= entered[0]
    assert dict(span.attributes or {}) == {
        "exosphere.namespace": NAMESPACE,
        "exosphere.graph.name": GRAPH,
        "exosphere.run.id": RUN_ID,
        "exosphere.trigger.start_delay_ms": 1500,
        "messaging.system": "exosphere",
        "messaging.operation.type": "send",
        "messaging.operation.name": "trigger",
        "messaging.destination.name": GRAPH,
    }
    assert span.status.status_code is StatusCode.UNSET


async def test_the_caller_span_and_the_trigger_span_link_each_other_across_traces(
    telemetry: Telemetry, exporter: InMemorySpanExporter, client: StateManager
) -> None:
    with telemetry.tracer.start_as_current_span("web handler") as caller:
        await make_trigger_wrapper(telemetry)(answering({"run_id": RUN_ID}), client, (GRAPH,), {})
    span = _only(exporter, f"trigger {GRAPH}")
    handler = _only(exporter, "web handler")
    assert span.context is not None and handler.context is not None
    assert span.parent is None and span.context.trace_id == trace_id_for_run(RUN_ID)
    assert [link.context.span_id for link in span.links] == [caller.get_span_context().span_id]
    [back] = handler.links
    assert back.context.span_id == run_span_id(RUN_ID)
    assert dict(back.attributes or {}) == {"exosphere.run.id": RUN_ID}


async def test_under_a_server_owned_root_the_trigger_span_is_its_child_with_a_random_id(
    telemetry: Telemetry, exporter: InMemorySpanExporter, client: StateManager
) -> None:
    traceparent = RunContext(RUN_ID, NAMESPACE, GRAPH, 1, True).carrier()["traceparent"]
    answer = {"run_id": RUN_ID, "traceparent": traceparent}
    assert await make_trigger_wrapper(telemetry)(answering(answer), client, (GRAPH,), {}) is answer
    span = _only(exporter, f"trigger {GRAPH}")
    assert span.context is not None and span.parent is not None
    assert span.context.trace_id == trace_id_for_run(RUN_ID)
    assert span.parent.span_id == run_span_id(RUN_ID) and span.parent.is_remote
    assert span.context.span_id != run_span_id(RUN_ID)


async def test_a_traceparent_of_another_trace_does_not_take_the_root(
    telemetry: Telemetry, exporter: InMemorySpanExporter, client: StateManager
) -> None:
    foreign = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    await make_trigger_wrapper(telemetry)(
        answering({"run_id": RUN_ID, "traceparent": foreign}), client, (GRAPH,), {}
    )
    span = _only(exporter, f"trigger {GRAPH}")
    assert span.context is not None and span.parent is None
    assert span.context.span_id == run_span_id(RUN_ID)


@pytest.mark.parametrize("answer", [{"status": "CREATED"}, {"run_id": ""}, {"run_id": 7}, None, ["x"]])
async def test_an_answer_without_a_run_id_gives_a_span_where_the_caller_is(
    telemetry: Telemetry, exporter: InMemorySpanExporter, client: StateManager, answer: Any
) -> None:
    with telemetry.tracer.start_as_current_span("caller") as caller:
        result = await make_trigger_wrapper(telemetry)(answering(answer), client, (GRAPH,), {})
    assert result is answer
    span = _only(exporter, f"trigger {GRAPH}")
    assert span.parent is not None and span.parent.span_id == caller.get_span_context().span_id
    assert "exosphere.run.id" not in (span.attributes or {})


async def test_a_failing_trigger_raises_unchanged_and_leaves_an_error_span_where_the_caller_is(
    telemetry: Telemetry, exporter: InMemorySpanExporter, client: StateManager
) -> None:
    failure = ConnectionError("state manager down")

    async def trigger(*args: Any, **kwargs: Any) -> Any:
        raise failure

    with telemetry.tracer.start_as_current_span("caller") as caller, pytest.raises(ConnectionError) as raised:
        await make_trigger_wrapper(telemetry)(trigger, client, (), {"graph_name": GRAPH})
    assert raised.value is failure
    span = _only(exporter, f"trigger {GRAPH}")
    assert span.parent is not None and span.parent.span_id == caller.get_span_context().span_id
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["error.type"] == "ConnectionError"
    assert [e.name for e in span.events] == ["exception"]


async def test_the_trigger_request_carries_the_callers_context_and_only_it(
    telemetry: Telemetry, client: StateManager
) -> None:
    sent: list[dict[str, str]] = []

    async def request(*args: Any, **kwargs: Any) -> None:
        sent.append(dict(kwargs.get("headers") or {}))

    with_headers = make_request_headers_wrapper(telemetry)

    async def trigger(*args: Any, **kwargs: Any) -> Any:
        await with_headers(request, None, ("POST", "http://sm/trigger"), {"headers": {"x-api-key": "k"}})
        return {"run_id": RUN_ID}

    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        with telemetry.tracer.start_as_current_span("caller") as caller:
            await make_trigger_wrapper(telemetry)(trigger, client, (GRAPH,), {})
            await with_headers(request, None, ("GET", "http://elsewhere"), {})
    finally:
        context.detach(token)
    on_trigger, afterwards = sent
    caller_id = caller.get_span_context()
    assert on_trigger["x-api-key"] == "k"
    flags = int(caller_id.trace_flags)
    assert on_trigger["traceparent"] == f"00-{caller_id.trace_id:032x}-{caller_id.span_id:016x}-{flags:02x}"
    assert on_trigger["baggage"] == "tenant=acme"
    assert afterwards == {}


async def test_the_trigger_counter_counts_by_namespace_and_graph_only(
    telemetry: Telemetry, client: StateManager, points: Callable[[str], list[Any]]
) -> None:
    wrapper = make_trigger_wrapper(telemetry)
    for _ in range(2):
        await wrapper(answering({"run_id": RUN_ID}), client, (GRAPH,), {})
    [point] = points("exosphere.trigger.count")
    assert point.value == 2
    assert dict(point.attributes) == {"exosphere.namespace": NAMESPACE, "exosphere.graph.name": GRAPH}


async def test_with_instrumentation_suppressed_the_trigger_passes_through(
    telemetry: Telemetry, exporter: InMemorySpanExporter, client: StateManager,
    points: Callable[[str], list[Any]],
) -> None:
    answer = {"run_id": RUN_ID}
    with suppress_instrumentation():
        assert await make_trigger_wrapper(telemetry)(answering(answer), client, (GRAPH,), {}) is answer
    assert exporter.get_finished_spans() == ()
    assert points("exosphere.trigger.count") == []


class _RaisingProcessor(SpanProcessor):
    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        raise RuntimeError("broken processor")

    def on_end(self, span: ReadableSpan) -> None:
        raise RuntimeError("broken processor")


class _RaisingCounter(Counter):
    def __init__(self) -> None:
        pass

    def add(self, amount: int | float, attributes: Any = None, context: Any = None) -> None:
        raise RuntimeError("broken counter")


async def test_a_broken_processor_or_instrument_never_changes_what_the_trigger_returns(
    telemetry: Telemetry, provider: TracerProvider, client: StateManager, caplog: pytest.LogCaptureFixture
) -> None:
    answer = {"run_id": RUN_ID}
    provider.add_span_processor(_RaisingProcessor())
    broken_counter = dataclasses.replace(
        telemetry, metrics=dataclasses.replace(telemetry.metrics, triggers=_RaisingCounter())
    )
    with caplog.at_level(logging.WARNING, logger="exo_otel"):
        assert await make_trigger_wrapper(telemetry)(answering(answer), client, (GRAPH,), {}) is answer
        assert await make_trigger_wrapper(broken_counter)(answering(answer), client, (GRAPH,), {}) is answer
    messages = [r.getMessage() for r in caplog.records]
    assert any("starting span 'trigger greet' failed" in m for m in messages)
    assert any("recording the trigger span failed" in m for m in messages)


async def test_a_graph_call_is_a_client_span_current_while_the_call_runs(
    telemetry: Telemetry, exporter: InMemorySpanExporter, client: StateManager
) -> None:
    current: list[trace.Span] = []
    answer = {"name": GRAPH, "validation_status": "VALID"}

    async def upsert(*args: Any, **kwargs: Any) -> Any:
        current.append(trace.get_current_span())
        return answer

    with telemetry.tracer.start_as_current_span("deploy") as caller:
        result = await make_graph_call_wrapper(telemetry, "upsert_graph")(
            upsert, client, (), {"graph_name": GRAPH, "graph_nodes": [], "secrets": {}}
        )
    assert result is answer
    span = _only(exporter, f"upsert_graph {GRAPH}")
    assert span.kind is SpanKind.CLIENT and span.context is not None
    assert span.parent is not None and span.parent.span_id == caller.get_span_context().span_id
    assert current[0].get_span_context().span_id == span.context.span_id
    assert dict(span.attributes or {}) == {"exosphere.namespace": NAMESPACE, "exosphere.graph.name": GRAPH}
    assert trace.get_current_span() is trace.INVALID_SPAN  # the call span is current no more


async def test_a_failing_graph_call_raises_unchanged_and_its_span_is_an_error(
    telemetry: Telemetry, exporter: InMemorySpanExporter, client: StateManager
) -> None:
    failure = TimeoutError("graph never validated")

    async def get_graph(*args: Any, **kwargs: Any) -> Any:
        raise failure

    with pytest.raises(TimeoutError) as raised:
        await make_graph_call_wrapper(telemetry, "get_graph")(get_graph, client, (GRAPH,), {})
    assert raised.value is failure
    span = _only(exporter, f"get_graph {GRAPH}")
    assert span.parent is None  # no caller span: a trace of its own
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["error.type"] == "TimeoutError"


async def test_a_broken_processor_never_changes_what_a_graph_call_returns(
    telemetry: Telemetry, provider: TracerProvider, client: StateManager
) -> None:
    provider.add_span_processor(_RaisingProcessor())
    answer = {"name": GRAPH}
    result = await make_graph_call_wrapper(telemetry, "get_graph")(answering(answer), client, (GRAPH,), {})
    assert result is answer
