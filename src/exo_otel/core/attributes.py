"""Attribute, event and baggage keys of the exo_otel trace model (user-facing: do not rename)."""

from __future__ import annotations

from typing import Final

from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE

NAMESPACE: Final = "exosphere.namespace"
GRAPH_NAME: Final = "exosphere.graph.name"
RUN_ID: Final = "exosphere.run.id"
NODE_NAME: Final = "exosphere.node.name"
NODE_IDENTIFIER: Final = "exosphere.node.identifier"
STATE_ID: Final = "exosphere.state.id"
STATE_OUTCOME: Final = "exosphere.state.outcome"
STATE_QUEUE_WAIT_MS: Final = "exosphere.state.queue_wait_ms"
STATE_FANOUT_OF: Final = "exosphere.state.fanout_of"
STATE_RETRY_COUNT: Final = "exosphere.state.retry_count"
RUNTIME_NAME: Final = "exosphere.runtime.name"
TRIGGER_START_DELAY_MS: Final = "exosphere.trigger.start_delay_ms"
NODE_INPUTS: Final = "exosphere.node.inputs"
NODE_OUTPUTS: Final = "exosphere.node.outputs"

__all__ = ["ERROR_TYPE"]

OUTCOME_EXECUTED: Final = "executed"
OUTCOME_ERRORED: Final = "errored"
OUTCOME_PRUNED: Final = "pruned"
OUTCOME_REQUEUED: Final = "requeued"

EVENT_PRUNED: Final = "exosphere.pruned"
EVENT_REQUEUED: Final = "exosphere.requeued"
EVENT_REQUEUE_DELAY_MS: Final = "exosphere.requeue.delay_ms"

# Baggage entries set inside an execute span (the same keys as the span attributes).
BAGGAGE_KEYS: Final = (RUN_ID, NAMESPACE, GRAPH_NAME, NODE_IDENTIFIER, STATE_ID)
