"""Semantic conventions on the wire: messaging attributes, retry counts, ``error.type`` and the schema URL."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from exospherehost import BaseNode, GraphNodeModel, RetryPolicyModel, RetryStrategyEnum, StoreConfigModel
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.semconv import schemas
from opentelemetry.semconv._incubating.attributes import messaging_attributes
from opentelemetry.semconv.attributes import error_attributes
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import BaseModel

from exo_otel.core import attributes as attr
from exo_otel.core.ids import trace_id_for_run
from exo_otel.sdk.execution import begin, finish
from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from exo_otel.sdk.state_context import PolledState
from exo_otel_demo.embedded import EmbeddedStateManager
from helpers.http_proxy import serve_loopback
from helpers.otel_fixtures import instrumented
from helpers.sm_fixtures import running_runtime, sdk_state_manager, wait_for_run, wait_until

NAMESPACE = "exo-otel-semconv"
GRAPH = "retrying"
FAILURES = 2
ATTEMPTS: dict[str, int] = {}


class Wobbly(BaseNode):  # type: ignore[misc]
    """Fails on its first two attempts per key, then succeeds."""

    class Inputs(BaseModel):
        key: str

    class Outputs(BaseModel):
        key: str

    async def execute(self) -> BaseNode.Outputs:
        ATTEMPTS[self.inputs.key] = ATTEMPTS.get(self.inputs.key, 0) + 1
        if ATTEMPTS[self.inputs.key] <= FAILURES:
            raise RuntimeError("not yet")
        return self.Outputs(key=self.inputs.key)


class Settle(BaseNode):  # type: ignore[misc]
    class Inputs(BaseModel):
        key: str

    class Outputs(BaseModel):
        done: str

    async def execute(self) -> BaseNode.Outputs:
        return self.Outputs(done=self.inputs.key)


NODES: list[type[BaseNode]] = [Wobbly, Settle]


@asynccontextmanager
async def retry_count_proxy(sm: EmbeddedStateManager) -> AsyncIterator[str]:
    """A loopback proxy adding each state's ``retry_count`` to enqueue answers, as exo_otel's server does.

    The embedded state manager sends ``run_id``, ``graph_name`` and ``parents`` only; the count comes
    from its own record of the state.
    """

    async def handle(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with (
            aiohttp.ClientSession() as session,
            session.request(request.method, sm.uri + request.path_qs, data=await request.read(),
                            headers=headers) as answer,
        ):
            body = await answer.read()
        if request.path.endswith("/states/enqueue") and answer.status == 200:
            payload = json.loads(body)
            for state in payload.get("states", []):
                view = sm.state(state["state_id"])
                assert view is not None
                state["retry_count"] = view.retry_count
            body = json.dumps(payload).encode()
        return web.Response(body=body, status=answer.status, content_type=answer.content_type)

    async with serve_loopback(handle) as uri:
        yield uri


class _Proxied:
    """The parts of an EmbeddedStateManager the SDK helpers read, pointing at the proxy."""

    def __init__(self, sm: EmbeddedStateManager, uri: str) -> None:
        self.uri, self.api_key, self._sm = uri, sm.api_key, sm

    def registered_nodes(self, namespace: str) -> set[str]:
        return self._sm.registered_nodes(namespace)


async def _run_retrying_graph(
    sm: EmbeddedStateManager, exporter: InMemorySpanExporter, uri: str
) -> tuple[str, list[ReadableSpan]]:
    target: Any = _Proxied(sm, uri)
    async with running_runtime(target, NAMESPACE, NODES):
        client = sdk_state_manager(target, NAMESPACE)
        await client.upsert_graph(
            GRAPH,
            [
                GraphNodeModel(node_name="Wobbly", namespace=NAMESPACE, identifier="wobbly",
                               inputs={"key": "${{ store.key }}"}, next_nodes=["settle"]),
                GraphNodeModel(node_name="Settle", namespace=NAMESPACE, identifier="settle",
                               inputs={"key": "${{ wobbly.outputs.key }}"}),
            ],
            {},
            retry_policy=RetryPolicyModel(max_retries=3, strategy=RetryStrategyEnum.FIXED, backoff_factor=20),
            store_config=StoreConfigModel(required_keys=["key"]),
            polling_interval=0.05,  # type: ignore[arg-type]
        )
        run_id = (await client.trigger(GRAPH, store={"key": str(uuid.uuid4())}))["run_id"]
        assert await wait_for_run(sm, run_id) == "SUCCESS"
        # trigger, 4 node spans (3 wobbly attempts, settle), 4 execute spans.
        await wait_until(lambda: len(exporter.get_finished_spans()) >= 9)
    return run_id, list(exporter.get_finished_spans())


@pytest.mark.parametrize("sends_retry_count", [True, False])
async def test_trigger_and_execute_spans_carry_the_messaging_conventions(
    state_manager_with_context: EmbeddedStateManager,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    sends_retry_count: bool,
) -> None:
    sm = state_manager_with_context
    instrumentor = ExosphereInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider)
    try:
        if sends_retry_count:
            async with retry_count_proxy(sm) as uri:
                run_id, spans = await _run_retrying_graph(sm, span_exporter, uri)
        else:
            run_id, spans = await _run_retrying_graph(sm, span_exporter, sm.uri)
    finally:
        instrumentor.uninstrument()
    [trigger] = [s for s in spans if s.name == f"trigger {GRAPH}"]
    assert trigger.kind is SpanKind.PRODUCER
    assert {k: v for k, v in (trigger.attributes or {}).items() if k.startswith("messaging.")} == {
        "messaging.system": "exosphere",
        "messaging.operation.type": "send",
        "messaging.operation.name": "trigger",
        "messaging.destination.name": GRAPH,
    }
    executes = [s for s in spans if s.name.startswith("execute ")]
    assert sorted(s.name for s in executes) == ["execute Settle"] + ["execute Wobbly"] * (FAILURES + 1)
    for span in executes:
        attributes = span.attributes or {}
        assert span.kind is SpanKind.CONSUMER
        # No destination or message id: the span's name says the node (the queue), its parent the
        # state (the message).
        assert {k: v for k, v in attributes.items() if k.startswith("messaging.")} == {
            "messaging.system": "exosphere",
            "messaging.operation.type": "process",
            "messaging.operation.name": "execute",
        }
    for span in spans:
        assert span.instrumentation_scope is not None
        assert span.instrumentation_scope.schema_url == attr.SCHEMA_URL
    wobbly_nodes = sorted(
        (s for s in spans if s.name == "node wobbly"), key=lambda s: s.start_time or 0
    )
    counts = [(s.attributes or {}).get("exosphere.state.retry_count") for s in wobbly_nodes]
    if sends_retry_count:
        assert counts == [None, 1, 2]  # a first attempt (0) carries none
    else:  # unknown: not guessed
        assert counts == [None, None, None]
    # The retry count is the node span's alone; each execute span is under its own attempt's node span.
    assert all("exosphere.state.retry_count" not in (s.attributes or {}) for s in executes)
    node_ids = {s.context.span_id for s in wobbly_nodes if s.context is not None}
    wobbly_executes = [s for s in executes if s.name == "execute Wobbly"]
    assert {s.parent.span_id for s in wobbly_executes if s.parent is not None} == node_ids
    # The trace id is the run id: the run's spans need not say it.
    for span in executes + wobbly_nodes:
        assert span.context is not None and span.context.trace_id == trace_id_for_run(run_id)
        assert "exosphere.run.id" not in (span.attributes or {})


async def test_a_failure_without_an_exception_is_error_type_other(
    tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> None:
    # A worker that took a state and ends it with no outcome reported (no exception to name).
    with instrumented(tracer_provider=tracer_provider) as instrumentor:
        telemetry = instrumentor._telemetry
        payload = {"state_id": "s-1", "node_name": "N", "identifier": "n", "inputs": {}, "retry_count": 1}
        execution = begin(telemetry, PolledState.from_payload(payload, None), payload, "ns")
        await asyncio.sleep(0)
        finish(execution)
    spans = {s.name: s for s in span_exporter.get_finished_spans()}
    assert set(spans) == {"node n", "execute N"}
    for span in spans.values():
        assert span.status.status_code is StatusCode.ERROR
        assert (span.attributes or {})["error.type"] == "_OTHER"
    assert (spans["node n"].attributes or {})["exosphere.state.retry_count"] == 1
    # Placed in no run: the node span roots the state's own trace, so it alone says the namespace.
    assert (spans["node n"].attributes or {})["exosphere.namespace"] == "ns"
    assert "exosphere.namespace" not in (spans["execute N"].attributes or {})


@pytest.mark.parametrize("value", [-1, True, "2", 1.5, None])
def test_a_retry_count_that_is_not_a_count_is_not_recorded(value: object) -> None:
    payload = {"state_id": "s", "node_name": "N", "identifier": "n", "retry_count": value}
    assert PolledState.from_payload(payload, None).retry_count is None


def _documented(module: object, name: str) -> str:
    """The docstring the semconv package gives a module constant (``Deprecated: ...`` when it is)."""
    match = re.search(rf'^{name}: Final = "[^"]*"\n"""(.*?)"""', inspect.getsource(module), flags=re.S | re.M)  # type: ignore[arg-type]
    assert match, name
    return match.group(1)


def test_the_schema_url_names_a_version_whose_conventions_we_use() -> None:
    assert attr.SCHEMA_URL in {member.value for member in schemas.Schemas}
    version = tuple(int(part) for part in attr.SCHEMA_URL.rsplit("/", 1)[1].split("."))
    # messaging.operation.type and messaging.operation.name replaced messaging.operation in 1.26.0.
    assert version >= (1, 26, 0)
    for name in ("MESSAGING_SYSTEM", "MESSAGING_OPERATION_TYPE", "MESSAGING_OPERATION_NAME",
                 "MESSAGING_DESTINATION_NAME"):
        assert getattr(attr, name) == getattr(messaging_attributes, name)
        assert "Deprecated" not in _documented(messaging_attributes, name), name
    assert f"schema URL `{attr.SCHEMA_URL}`" in (Path(__file__).parents[2] / "README.md").read_text()
    assert attr.ERROR_TYPE == error_attributes.ERROR_TYPE
    assert attr.ERROR_TYPE_OTHER == error_attributes.ErrorTypeValues.OTHER.value == "_OTHER"
