"""Nodes and helpers for the adversarial tests: nodes that hang, raise anything, or see secrets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar

from exospherehost import BaseNode, GraphNodeModel, Runtime, StateManager
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from pydantic import BaseModel, field_validator

from exo_otel_demo.embedded import EmbeddedStateManager
from helpers.sm_fixtures import POLL_INTERVAL, wait_until

NAMESPACE = "hostile"


class HangNode(BaseNode):
    """Counts its starts, then waits until cancelled."""

    started: ClassVar[int] = 0

    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        text: str

    async def execute(self) -> BaseNode.Outputs:
        HangNode.started += 1
        await asyncio.sleep(3600)
        return self.Outputs(text=self.inputs.text)


class RaiseNode(BaseNode):
    """Raises whatever exception the test put in ``to_raise``; counts its calls."""

    to_raise: ClassVar[BaseException | None] = None
    calls: ClassVar[int] = 0

    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        text: str

    async def execute(self) -> BaseNode.Outputs:
        RaiseNode.calls += 1
        if RaiseNode.to_raise is not None:
            raise RaiseNode.to_raise
        return self.Outputs(text=self.inputs.text)


class StrictSecrets(BaseModel):
    """A secrets model whose validator rejects the token: pydantic echoes the value in its error."""

    token: str

    @field_validator("token")
    @classmethod
    def must_start_with_sk(cls, value: str) -> str:
        if not value.startswith("sk-"):
            raise ValueError("the token must start with sk-")
        return value


class SecretNode(BaseNode):
    """Fails with its secret in the message when asked to; its secrets model may reject the value."""

    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        text: str

    Secrets = StrictSecrets

    async def execute(self) -> BaseNode.Outputs:
        if self.inputs.text == "leak":
            raise RuntimeError(f"upstream refused token {self.secrets.token}")  # type: ignore[attr-defined]
        return self.Outputs(text=self.inputs.text)


def one_node_graph(node: type[BaseNode], identifier: str = "only") -> list[GraphNodeModel]:
    return [
        GraphNodeModel(
            node_name=node.__name__,
            namespace=NAMESPACE,
            identifier=identifier,
            inputs={"text": "${{ store.text }}"},
        )
    ]


async def upsert_one_node_graph(
    client: StateManager, graph: str, node: type[BaseNode], secrets: dict[str, str] | None = None,
    identifier: str = "only",
) -> None:
    from exospherehost.models import RetryPolicyModel, StoreConfigModel

    await client.upsert_graph(
        graph, one_node_graph(node, identifier), secrets or {}, polling_interval=0.05,  # type: ignore[arg-type]
        store_config=StoreConfigModel(required_keys=["text"]),
        # One retry, soon: a failing node is tried twice, quickly.
        retry_policy=RetryPolicyModel(max_retries=1, backoff_factor=10),
    )


def metric_points(data: Any, name: str) -> list[Any]:
    """The data points of metric ``name`` in one collection (``reader.get_metrics_data()``)."""
    return [
        point
        for resource in getattr(data, "resource_metrics", []) or []
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


def inflight(reader: InMemoryMetricReader) -> float:
    """The sum over all attribute sets of ``exosphere.runtime.inflight`` (0 when never recorded)."""
    points = metric_points(reader.get_metrics_data(), "exosphere.runtime.inflight")
    return float(sum(point.value for point in points))


@contextlib.asynccontextmanager
async def runtime_via(
    uri: str, sm: EmbeddedStateManager, nodes: Sequence[type[BaseNode]], workers: int = 4
) -> AsyncIterator[Runtime]:
    """A real Runtime talking to ``uri`` (a proxy in front of ``sm``); cancelled when the block ends."""
    runtime = Runtime(
        namespace=NAMESPACE, name="hostile-runtime", nodes=list(nodes), state_manager_uri=uri,
        key=sm.api_key, workers=workers, poll_interval=POLL_INTERVAL,  # type: ignore[arg-type]
    )
    task = runtime.start()
    assert task is not None
    try:
        names = {node.__name__ for node in nodes}
        await wait_until(lambda: task.done() or names <= sm.registered_nodes(NAMESPACE))
        if task.done():
            task.result()
        yield runtime
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class _EncoderErrors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def encode_all(spans: Sequence[ReadableSpan]) -> list[str]:
    """Encode every span alone with the real OTLP encoder; what it rejected or dropped.

    The encoder raises on a span it cannot encode (the whole batch is lost) and logs, then drops,
    an attribute it cannot encode: both count.
    """
    errors = []
    logged = _EncoderErrors()
    encoder_log = logging.getLogger("opentelemetry.exporter.otlp.proto.common")
    encoder_log.addHandler(logged)
    try:
        for span in spans:
            try:
                encode_spans([span]).SerializeToString()
            except Exception as exc:
                errors.append(f"{span.name!r}: {type(exc).__name__}: {exc}")
    finally:
        encoder_log.removeHandler(logged)
    return errors + logged.messages
