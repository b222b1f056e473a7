"""`exo_otel.sdk.runtime`: the wrappers of a real `Runtime`'s methods, called directly, and its traced queue.

A state goes through what a runtime's worker does with it: taken off the queue (`get`), reported
(a stand-in for the report's HTTP call, wrapped as the instrumentor wraps it), marked done
(`task_done`). No server, no poll loop, no worker task.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
from collections.abc import Callable
from typing import Any

import pytest
from exospherehost import BaseNode, PruneSignal, ReQueueAfterSignal, Runtime
from opentelemetry import baggage, trace
from opentelemetry.instrumentation.utils import is_http_instrumentation_enabled, suppress_instrumentation
from opentelemetry.metrics import Histogram
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import BaseModel

from exo_otel.core.ids import run_span_id, state_span_id, trace_id_for_run, trace_id_for_state
from exo_otel.sdk.config import PlacementMode, Settings
from exo_otel.sdk.request_headers import make_request_headers_wrapper
from exo_otel.sdk.runtime import (
    TRACING_ATTRIBUTE,
    RuntimeTracing,
    TracedStateQueue,
    current_execution,
    make_errored_wrapper,
    make_executed_wrapper,
    make_node_wrapper,
    make_poll_wrapper,
    make_pruned_wrapper,
    make_requeued_wrapper,
    make_runtime_init_wrapper,
    make_start_wrapper,
)
from exo_otel.sdk.telemetry import Telemetry
from exo_otel.server.context import RunContext

NAMESPACE = "unit-rt"
RUN_ID = "6f1c2e5a-8b3d-4f7e-9a10-112233445566"
STATE_ID = "65f0c0ffee00000000000001"
PARENT_ID = "65f0c0ffee00000000000000"


class Greet(BaseNode):  # type: ignore[misc]
    class Inputs(BaseModel):
        name: str

    class Outputs(BaseModel):
        greeting: str

    async def execute(self) -> BaseNode.Outputs:
        total = sum(i * i for i in range(20_000))  # some CPU of the node's own
        return self.Outputs(greeting=f"hello {self.inputs.name} {total}")


def traced_runtime(telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch) -> Runtime:
    """A real Runtime, its __init__ run through the instrumentor's init wrapper."""
    monkeypatch.setenv("EXOSPHERE_DISABLE_DEFAULT_LOGGING", "1")
    runtime = Runtime.__new__(Runtime)
    make_runtime_init_wrapper(telemetry)(
        functools.partial(Runtime.__init__, runtime), runtime, (),
        {"namespace": NAMESPACE, "name": "unit-runtime", "nodes": [Greet],
         "state_manager_uri": "http://127.0.0.1:9", "key": "k", "batch_size": 3},
    )
    return runtime


def payload(**extra: Any) -> dict[str, Any]:
    return {
        "state_id": STATE_ID, "node_name": "Greet", "identifier": "greet", "inputs": {"name": "world"},
        "created_at": "2026-12-03T10:00:00", **extra,
    }


def with_run(**extra: Any) -> dict[str, Any]:
    """A state as the embedded state manager's ``expose_run_context`` sends it: the run, no carrier."""
    return payload(run_id=RUN_ID, graph_name="hello", parents={"start": PARENT_ID}, **extra)


async def report(*args: Any, **kwargs: Any) -> str:
    return "reported"


def _named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def test_the_init_wrapper_gives_the_runtime_a_traced_queue_of_the_same_size(
    telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = traced_runtime(telemetry, monkeypatch)
    assert isinstance(runtime._state_queue, TracedStateQueue)
    assert runtime._state_queue.maxsize == 6
    tracing = getattr(runtime, TRACING_ATTRIBUTE)
    assert isinstance(tracing, RuntimeTracing)
    assert (tracing.namespace, tracing.runtime) == (NAMESPACE, runtime)
    assert runtime._node_names == ["Greet"]  # the runtime itself is as its __init__ made it


def test_the_init_wrapper_leaves_a_failing_init_failing_unchanged(telemetry: Telemetry) -> None:
    runtime = Runtime.__new__(Runtime)
    with pytest.raises(ValueError, match="Batch size should be at least 1"):
        make_runtime_init_wrapper(telemetry)(
            functools.partial(Runtime.__init__, runtime), runtime, (),
            {"namespace": NAMESPACE, "name": "r", "nodes": [Greet], "state_manager_uri": "http://x",
             "key": "k", "batch_size": 0},
        )


async def test_a_state_with_its_run_gets_a_node_span_under_the_run_root_and_an_execute_span_under_it(
    telemetry: Telemetry, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = traced_runtime(telemetry, monkeypatch)
    queue = runtime._state_queue
    state = with_run()
    await queue.put(state)
    taken = await queue.get()
    assert taken is state and taken == with_run()  # the worker gets the state, unchanged
    current = trace.get_current_span()
    assert current.is_recording()
    assert baggage.get_baggage("exosphere.run.id") == RUN_ID
    assert baggage.get_baggage("exosphere.state.id") == STATE_ID
    assert baggage.get_baggage("exosphere.node.identifier") == "greet"
    outputs = [Greet.Outputs(greeting="hi")]
    result = await make_executed_wrapper(telemetry)(report, runtime, (STATE_ID, outputs), {})
    assert result == "reported"
    queue.task_done()
    assert trace.get_current_span() is not current
    [node] = _named(exporter, "node greet")
    [execute] = _named(exporter, "execute Greet")
    assert node.context is not None and execute.context is not None and node.parent is not None
    assert node.context.trace_id == execute.context.trace_id == trace_id_for_run(RUN_ID)
    assert node.context.span_id == state_span_id(STATE_ID)
    assert node.parent.span_id == run_span_id(RUN_ID)
    assert execute.parent is not None and execute.parent.span_id == node.context.span_id
    assert execute.context.span_id == current.get_span_context().span_id
    assert execute.kind is SpanKind.CONSUMER and node.kind is SpanKind.INTERNAL
    # The node span starts at the state's creation (naive: UTC); the link names the direct parent.
    assert node.start_time == int(dt.datetime(2026, 12, 3, 10, tzinfo=dt.UTC).timestamp() * 1e9)
    assert [link.context.span_id for link in node.links] == [state_span_id(PARENT_ID)]
    assert (node.attributes or {})["exosphere.state.outcome"] == "executed"
    assert execute.status.status_code is StatusCode.OK
    assert "exosphere.state.outcome" not in (execute.attributes or {})


async def test_with_the_servers_carrier_the_execute_span_goes_under_the_servers_node_span(
    telemetry: Telemetry, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = traced_runtime(telemetry, monkeypatch)
    carrier = RunContext(RUN_ID, NAMESPACE, "hello", 1, True, baggage={"tenant": "acme"}).carrier()
    await runtime._state_queue.put(with_run(node_spans="server", retry_count=0, **carrier))
    await runtime._state_queue.get()
    assert baggage.get_baggage("tenant") == "acme"  # the trigger caller's baggage reaches the node
    await make_executed_wrapper(telemetry)(report, runtime, (STATE_ID, []), {})
    runtime._state_queue.task_done()
    assert _named(exporter, "node greet") == []  # the server emits it
    [execute] = _named(exporter, "execute Greet")
    assert execute.parent is not None and execute.context is not None
    assert execute.parent.span_id == state_span_id(STATE_ID)
    assert execute.context.trace_id == trace_id_for_run(RUN_ID)


async def test_an_unsampled_carrier_records_nothing(
    telemetry: Telemetry, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = traced_runtime(telemetry, monkeypatch)
    carrier = RunContext(RUN_ID, NAMESPACE, "hello", 1, False).carrier()
    await runtime._state_queue.put(with_run(node_spans="server", **carrier))
    await runtime._state_queue.get()
    assert not trace.get_current_span().is_recording()
    assert trace.get_current_span().get_span_context().trace_id == trace_id_for_run(RUN_ID)
    runtime._state_queue.task_done()
    assert exporter.get_finished_spans() == ()


async def test_a_state_placed_in_no_run_roots_a_trace_of_its_own(
    telemetry: Telemetry, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    none = dataclasses.replace(telemetry, settings=Settings(placement=PlacementMode.NONE))
    runtime = traced_runtime(none, monkeypatch)
    await runtime._state_queue.put(payload())
    await runtime._state_queue.get()
    await make_executed_wrapper(none)(report, runtime, (STATE_ID, []), {})
    runtime._state_queue.task_done()
    [node] = _named(exporter, "node greet")
    assert node.context is not None and node.parent is None
    assert node.context.trace_id == trace_id_for_state(STATE_ID)
    assert (node.attributes or {})["exosphere.namespace"] == NAMESPACE


async def test_an_errored_report_marks_both_spans_with_the_exception_it_was_made_for(
    telemetry: Telemetry, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = traced_runtime(telemetry, monkeypatch)
    await runtime._state_queue.put(with_run())
    await runtime._state_queue.get()
    try:
        raise LookupError("no such greeting")
    except LookupError as exc:  # the SDK reports from inside its except block
        result = await make_errored_wrapper(telemetry)(report, runtime, (STATE_ID, str(exc)), {})
    assert result == "reported"
    runtime._state_queue.task_done()
    [node] = _named(exporter, "node greet")
    [execute] = _named(exporter, "execute Greet")
    for span in (node, execute):
        assert span.status.status_code is StatusCode.ERROR
        assert (span.attributes or {})["error.type"] == "LookupError"
        assert (span.attributes or {})["exosphere.state.outcome"] == "errored"
    assert [e.name for e in execute.events] == ["exception"]


async def test_a_prune_is_an_event_not_an_error(
    telemetry: Telemetry, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = traced_runtime(telemetry, monkeypatch)
    await runtime._state_queue.put(with_run())
    await runtime._state_queue.get()
    signal = PruneSignal({"why": "enough"})
    assert await make_pruned_wrapper(telemetry)(report, signal, ("http://sm/prune", "k"), {}) == "reported"
    runtime._state_queue.task_done()
    [node] = _named(exporter, "node greet")
    [execute] = _named(exporter, "execute Greet")
    assert [e.name for e in execute.events] == ["exosphere.pruned"]
    assert (node.attributes or {})["exosphere.state.outcome"] == "pruned"
    assert StatusCode.ERROR not in (node.status.status_code, execute.status.status_code)


async def test_a_requeue_ends_the_attempt_but_leaves_the_node_span_to_the_final_outcome(
    telemetry: Telemetry, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = traced_runtime(telemetry, monkeypatch)
    await runtime._state_queue.put(with_run())
    await runtime._state_queue.get()
    signal = ReQueueAfterSignal(dt.timedelta(seconds=2.5))
    await make_requeued_wrapper(telemetry)(report, signal, ("http://sm/requeue", "k"), {})
    runtime._state_queue.task_done()
    assert _named(exporter, "node greet") == []
    [execute] = _named(exporter, "execute Greet")
    [event] = execute.events
    assert event.name == "exosphere.requeued"
    assert dict(event.attributes or {}) == {"exosphere.requeue.delay_ms": 2500}
    assert (execute.attributes or {})["exosphere.state.outcome"] == "requeued"
    # The second attempt, in this runtime, ends the node span: one node span, two executions under it.
    await runtime._state_queue.put(with_run())
    await runtime._state_queue.get()
    await make_executed_wrapper(telemetry)(report, runtime, (STATE_ID, []), {})
    runtime._state_queue.task_done()
    [node] = _named(exporter, "node greet")
    executes = _named(exporter, "execute Greet")
    assert node.context is not None and len(executes) == 2
    assert {e.parent.span_id for e in executes if e.parent is not None} == {node.context.span_id}


async def test_a_report_raises_what_the_sdk_call_raised_and_the_attempt_still_ends(
    telemetry: Telemetry, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = traced_runtime(telemetry, monkeypatch)
    failure = OSError("connection reset")

    async def failing(*args: Any, **kwargs: Any) -> None:
        raise failure

    await runtime._state_queue.put(with_run())
    await runtime._state_queue.get()
    with pytest.raises(OSError) as raised:
        await make_executed_wrapper(telemetry)(failing, runtime, (STATE_ID, []), {})
    assert raised.value is failure
    runtime._state_queue.task_done()
    assert len(_named(exporter, "execute Greet")) == 1


async def test_reports_outside_an_execution_pass_through(
    telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = traced_runtime(telemetry, monkeypatch)
    assert current_execution.get() is None
    assert await make_executed_wrapper(telemetry)(report, runtime, ("s", []), {}) == "reported"
    assert await make_errored_wrapper(telemetry)(report, runtime, ("s", "e"), {}) == "reported"


async def test_the_node_wrapper_measures_cpu_time_and_the_report_carries_it(
    telemetry: Telemetry, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    metered = dataclasses.replace(telemetry, settings=Settings(cpu_time=True))
    runtime = traced_runtime(metered, monkeypatch)
    sent: list[dict[str, str]] = []

    async def request(*args: Any, **kwargs: Any) -> None:
        sent.append(dict(kwargs.get("headers") or {}))

    with_headers = make_request_headers_wrapper(metered)

    async def notify(*args: Any, **kwargs: Any) -> None:
        await with_headers(request, None, ("POST", "http://sm/executed"), {"headers": {"x-api-key": "k"}})

    await runtime._state_queue.put(with_run())
    await runtime._state_queue.get()
    node = Greet()
    outputs = await make_node_wrapper(metered)(
        functools.partial(BaseNode._execute, node), node, (Greet.Inputs(name="cpu"), Greet.Secrets()), {}
    )
    assert outputs.greeting.startswith("hello cpu ")  # what the node returned, unchanged
    await make_executed_wrapper(metered)(notify, runtime, (STATE_ID, [outputs]), {})
    runtime._state_queue.task_done()
    [execute] = _named(exporter, "execute Greet")
    cpu = (execute.attributes or {})["exosphere.execution.cpu_time"]
    assert isinstance(cpu, float) and cpu > 0
    [headers] = sent
    assert headers["x-api-key"] == "k"
    assert float(headers["x-exo-otel-cpu-time"]) == cpu


async def test_without_cpu_time_the_node_is_not_metered_and_the_report_carries_no_header(
    telemetry: Telemetry, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = traced_runtime(telemetry, monkeypatch)
    sent: list[dict[str, str]] = []

    async def request(*args: Any, **kwargs: Any) -> None:
        sent.append(dict(kwargs.get("headers") or {}))

    async def notify(*args: Any, **kwargs: Any) -> None:
        await make_request_headers_wrapper(telemetry)(request, None, ("POST", "http://sm/executed"), {})

    await runtime._state_queue.put(with_run())
    await runtime._state_queue.get()
    node = Greet()
    await make_node_wrapper(telemetry)(
        functools.partial(BaseNode._execute, node), node, (Greet.Inputs(name="x"), Greet.Secrets()), {}
    )
    await make_executed_wrapper(telemetry)(notify, runtime, (STATE_ID, []), {})
    runtime._state_queue.task_done()
    assert sent == [{}]
    [execute] = _named(exporter, "execute Greet")
    assert "exosphere.execution.cpu_time" not in (execute.attributes or {})


async def test_a_poll_returns_its_answer_unchanged_with_http_spans_suppressed_and_is_timed(
    telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch, points: Callable[[str], list[Any]]
) -> None:
    none = dataclasses.replace(telemetry, settings=Settings(placement=PlacementMode.NONE))
    runtime = traced_runtime(none, monkeypatch)
    answer = {"states": [payload()], "status": "ok"}
    http_enabled: list[bool] = []

    async def enqueue_call(*args: Any, **kwargs: Any) -> Any:
        http_enabled.append(is_http_instrumentation_enabled())
        return answer

    assert await make_poll_wrapper(none)(enqueue_call, runtime, (), {}) is answer
    assert answer == {"states": [payload()], "status": "ok"}
    assert http_enabled == [False] and is_http_instrumentation_enabled()
    [point] = points("exosphere.runtime.poll.duration")
    assert point.count == 1 and dict(point.attributes) == {"exosphere.namespace": NAMESPACE}
    tracing = getattr(runtime, TRACING_ATTRIBUTE)
    assert list(tracing.polled) == [STATE_ID] and tracing.poll_s is not None


async def test_a_poll_of_a_runtime_made_before_instrumenting_passes_through(
    telemetry: Telemetry, points: Callable[[str], list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXOSPHERE_DISABLE_DEFAULT_LOGGING", "1")
    plain = Runtime(NAMESPACE, "plain", [Greet], state_manager_uri="http://127.0.0.1:9", key="k")
    answer = {"states": []}

    async def enqueue_call(*args: Any, **kwargs: Any) -> Any:
        return answer

    assert await make_poll_wrapper(telemetry)(enqueue_call, plain, (), {}) is answer
    assert points("exosphere.runtime.poll.duration") == []


@pytest.mark.parametrize("answer", [None, "not json", {"states": "nope"}, {"states": [1, {"no": "id"}]}])
async def test_a_poll_answer_of_any_shape_is_returned_as_it_is(
    telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch, answer: Any
) -> None:
    runtime = traced_runtime(telemetry, monkeypatch)

    async def enqueue_call(*args: Any, **kwargs: Any) -> Any:
        return answer

    assert await make_poll_wrapper(telemetry)(enqueue_call, runtime, (), {}) is answer
    assert getattr(runtime, TRACING_ATTRIBUTE).polled == {}


async def test_the_start_wrapper_returns_and_raises_what_the_runtime_does(
    telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = traced_runtime(telemetry, monkeypatch)
    assert await make_start_wrapper(telemetry)(report, runtime, (), {}) == "reported"
    failure = RuntimeError("Failed to register nodes")

    async def start(*args: Any, **kwargs: Any) -> None:
        raise failure

    with pytest.raises(RuntimeError) as raised:
        await make_start_wrapper(telemetry)(start, runtime, (), {})
    assert raised.value is failure


class _RaisingHistogram(Histogram):
    def __init__(self) -> None:
        pass

    def record(self, amount: int | float, attributes: Any = None, context: Any = None) -> None:
        raise RuntimeError("broken histogram")


async def test_a_failure_inside_exo_otel_is_logged_and_the_worker_gets_its_state(
    telemetry: Telemetry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    broken = dataclasses.replace(
        telemetry, metrics=dataclasses.replace(telemetry.metrics, queue_wait=_RaisingHistogram(),
                                               poll_duration=_RaisingHistogram()),
    )
    runtime = traced_runtime(broken, monkeypatch)
    state = with_run()
    answer = {"states": [state]}

    async def enqueue_call(*args: Any, **kwargs: Any) -> Any:
        return answer

    with caplog.at_level(logging.WARNING, logger="exo_otel"):
        assert await make_poll_wrapper(broken)(enqueue_call, runtime, (), {}) is answer
        await runtime._state_queue.put(state)
        assert await runtime._state_queue.get() is state
        assert await make_executed_wrapper(broken)(report, runtime, (STATE_ID, []), {}) == "reported"
        runtime._state_queue.task_done()
    messages = [r.getMessage() for r in caplog.records]
    assert any("recording a poll failed" in m for m in messages)
    assert any("starting a state's spans failed" in m for m in messages)
    assert runtime._state_queue.qsize() == 0


async def test_with_instrumentation_off_states_pass_through_without_spans(
    telemetry: Telemetry, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = traced_runtime(telemetry, monkeypatch)
    state = with_run()
    with suppress_instrumentation():
        await runtime._state_queue.put(state)
        assert await runtime._state_queue.get() is state
        runtime._state_queue.task_done()
    telemetry.enabled = False  # uninstrumented: a runtime made before keeps its queue
    await runtime._state_queue.put(state)
    assert await runtime._state_queue.get() is state
    runtime._state_queue.task_done()
    assert exporter.get_finished_spans() == ()
    assert getattr(runtime, TRACING_ATTRIBUTE).polled == {}


def test_the_current_context_and_suppression_read_directly_answer_as_the_api() -> None:
    from opentelemetry import context as otel_context
    from opentelemetry.instrumentation.utils import is_instrumentation_enabled

    from exo_otel.sdk import context_keys

    # The probes found the context variable and both suppression keys (else the API calls are used).
    assert context_keys.get_current is not otel_context.get_current
    assert context_keys.instrumentation_enabled is not is_instrumentation_enabled
    outer = otel_context.get_current()
    assert context_keys.get_current() is outer
    token = otel_context.attach(otel_context.set_value("exo_otel.test", 1))
    try:
        assert context_keys.get_current() is otel_context.get_current() is not outer
        assert context_keys.instrumentation_enabled() is is_instrumentation_enabled() is True
        with suppress_instrumentation():
            assert context_keys.instrumentation_enabled() is is_instrumentation_enabled() is False
        keys = context_keys._SUPPRESSION_KEYS
        assert keys is not None
        for key in keys:  # either key alone suppresses, for both
            alone = otel_context.attach(otel_context.set_value(key, True))
            try:
                assert context_keys.instrumentation_enabled() is is_instrumentation_enabled() is False
            finally:
                otel_context.detach(alone)
    finally:
        otel_context.detach(token)
    assert context_keys.get_current() is outer


def test_a_polled_state_gets_each_payload_field_under_its_own_name() -> None:
    # `PolledState.from_payload` passes its fields by position (cheaper, once per state): every field
    # must land where it is declared, whatever order the dataclass lists them in.
    from exo_otel.sdk.state_context import PolledState, RunInfo

    carrier = (("traceparent", "00-" + "1" * 32 + "-" + "2" * 16 + "-01"),)
    run = RunInfo("run-1", "g", "parent-1", carrier, True)
    payload = {"state_id": "s-1", "node_name": "Node", "identifier": "ident", "retry_count": 3,
               "created_at": "2026-12-04T10:00:00.000001"}
    polled = PolledState.from_payload(payload, run, run_from_payload=True)
    expected = {
        "state_id": "s-1", "node_name": "Node", "identifier": "ident",
        "created_at_ns": 1_796_378_400_000_001_000, "run": run, "retry_count": 3,
        "run_from_payload": True, "node_spans_by_server": True,
    }
    assert {f.name: getattr(polled, f.name) for f in dataclasses.fields(PolledState)} == expected
    plain = PolledState.from_payload({"state_id": "s-2", "retry_count": -1}, None, run_from_payload=True)
    assert (plain.run, plain.retry_count, plain.run_from_payload, plain.node_spans_by_server) == (
        None, None, False, False
    )
