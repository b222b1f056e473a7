"""Inside execute only the run's baggage; log correlation only from exo_otel's own placement."""

from __future__ import annotations

import logging
from typing import ClassVar

from exospherehost import BaseNode
from opentelemetry import baggage, context, propagate
from pydantic import BaseModel

from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from exo_otel.sdk.logs import RUN_ID_FIELD
from exo_otel_demo.embedded import EmbeddedStateManager
from helpers.hostile_nodes import NAMESPACE, runtime_via, upsert_one_node_graph
from helpers.mutating_proxy import mutating_proxy
from helpers.sm_fixtures import running_runtime, sdk_state_manager, wait_for_run, wait_until

BIG = "x" * 3000
node_log = logging.getLogger("exo_otel.tests.baggage_node")


class BaggageNode(BaseNode):
    seen: ClassVar[dict[str, object]] = {}
    headers: ClassVar[dict[str, str]] = {}

    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        text: str

    async def execute(self) -> BaseNode.Outputs:
        BaggageNode.seen = dict(baggage.get_all())
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        BaggageNode.headers = carrier
        return self.Outputs(text=self.inputs.text)


async def test_baggage_current_where_the_runtime_started_is_not_the_runs(
    instrumentor: ExosphereInstrumentor, state_manager: EmbeddedStateManager
) -> None:
    client = sdk_state_manager(state_manager, NAMESPACE)
    token = context.attach(baggage.set_baggage("leak", BIG))
    try:
        runtime_cm = running_runtime(state_manager, NAMESPACE, [BaggageNode])
        await runtime_cm.__aenter__()  # Runtime.start() here: its tasks copy this context
    finally:
        context.detach(token)
    try:
        await upsert_one_node_graph(client, "baggage", BaggageNode)
        run_id = (await client.trigger("baggage", store={"text": "t"}))["run_id"]
        assert await wait_for_run(state_manager, run_id) == "SUCCESS"
    finally:
        await runtime_cm.__aexit__(None, None, None)
    assert "leak" not in BaggageNode.seen
    assert BaggageNode.seen.get("exosphere.run.id") == run_id
    assert BIG not in BaggageNode.headers.get("baggage", "")
    assert run_id in BaggageNode.headers.get("baggage", "")


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_forged_run_id_in_incoming_baggage_never_reaches_log_records(
    instrumentor: ExosphereInstrumentor,
) -> None:
    capture = Capture()
    node_log.addHandler(capture)
    forged = "forged\n2026-01-01 INFO everything is fine"
    token = context.attach(baggage.set_baggage("exosphere.run.id", forged))
    try:
        node_log.warning("handling a request")
    finally:
        context.detach(token)
        node_log.removeHandler(capture)
    [record] = capture.records
    assert getattr(record, RUN_ID_FIELD) == ""
    line = logging.Formatter("%(exosphere_run_id)s %(message)s").format(record)
    assert "\n" not in line


class LoggingNode(BaseNode):
    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        text: str

    async def execute(self) -> BaseNode.Outputs:
        node_log.warning("inside the node")
        return self.Outputs(text=self.inputs.text)


async def test_a_run_id_with_a_newline_from_a_hostile_payload_is_escaped_in_log_records(
    instrumentor: ExosphereInstrumentor,
) -> None:
    capture = Capture()
    node_log.addHandler(capture)
    try:
        async with EmbeddedStateManager(expose_run_context=True) as sm, mutating_proxy(sm.uri) as proxy:
            proxy.mutate = lambda state: state.update(run_id=state["run_id"] + "\nFORGED LINE")
            client = sdk_state_manager(sm, NAMESPACE)
            async with runtime_via(proxy.uri, sm, [LoggingNode]):
                await upsert_one_node_graph(client, "logging", LoggingNode)
                run_id = (await client.trigger("logging", store={"text": "t"}))["run_id"]
                assert await wait_for_run(sm, run_id) == "SUCCESS"
                await wait_until(lambda: capture.records)
    finally:
        node_log.removeHandler(capture)
    [record] = capture.records
    assert getattr(record, RUN_ID_FIELD) == run_id + "\\nFORGED LINE"
