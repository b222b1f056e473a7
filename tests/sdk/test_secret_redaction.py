"""Secret values a node received never reach telemetry, whatever echoes them."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from exo_otel_demo.embedded import EmbeddedStateManager
from helpers.hostile_nodes import NAMESPACE, SecretNode, upsert_one_node_graph
from helpers.sm_fixtures import running_runtime, sdk_state_manager, wait_for_run, wait_until

CASES = {
    # The secrets model rejects the value: pydantic echoes it (input_value=...) in its error.
    "rejected by the secrets model": ("hunter2-Sup3rS3cret", "fine"),
    # Long values are echoed truncated: the start and the end of the secret, around "...".
    "long value rejected": ("Q" * 20 + "-long-secret-value-" + "Z" * 30, "fine"),
    # The node puts the secret in its own exception message.
    "in the node's exception": ("sk-live-4242-abcdef", "leak"),
}


def _texts(span: ReadableSpan) -> Iterator[str]:
    yield span.name
    yield span.status.description or ""
    yield from (str(v) for v in (span.attributes or {}).values())
    for event in span.events:
        yield event.name
        yield from (str(v) for v in (event.attributes or {}).values())


def _fragments(secret: str) -> list[str]:
    # What pydantic shows of a long value: its first 24 and last 23 characters.
    return [secret, secret[:24], secret[-23:]]


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(self.format(record))


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
async def test_no_secret_in_spans_or_enriched_logs(
    instrumentor: ExosphereInstrumentor,
    span_exporter: InMemorySpanExporter,
    state_manager: EmbeddedStateManager,
    case: str,
) -> None:
    secret, text = CASES[case]
    records = Records()
    sdk_logger = logging.getLogger("exospherehost")
    sdk_logger.addHandler(records)
    previous_level = sdk_logger.level
    sdk_logger.setLevel(logging.INFO)
    try:
        client = sdk_state_manager(state_manager, NAMESPACE)
        async with running_runtime(state_manager, NAMESPACE, [SecretNode]):
            await upsert_one_node_graph(client, "secret", SecretNode, secrets={"token": secret})
            run_id = (await client.trigger("secret", store={"text": text}))["run_id"]
            await wait_for_run(state_manager, run_id)
            await wait_until(lambda: _errored_execute_spans(span_exporter))
    finally:
        sdk_logger.removeHandler(records)
        sdk_logger.setLevel(previous_level)
    spans = span_exporter.get_finished_spans()
    leaks: list[Any] = [
        (span.name, t) for span in spans for t in _texts(span) for f in _fragments(secret) if f in t
    ]
    assert leaks == []
    # The failure is still described: only the secret is gone.
    for execute in _errored_execute_spans(span_exporter):
        description = execute.status.description or ""
        assert "[REDACTED]" in description or "validation error(s) for StrictSecrets" in description
    errors = [r for r in records.texts if "Error executing state" in r]
    assert errors, records.texts
    assert [r for r in records.texts for f in _fragments(secret) if f in r] == []


def _errored_execute_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [
        s for s in exporter.get_finished_spans()
        if s.name == "execute SecretNode" and (s.attributes or {}).get("exosphere.state.outcome") == "errored"
    ]
