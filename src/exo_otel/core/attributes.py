"""Attribute, event and baggage keys (docs/trace-model.md, section "Attributes"; do not rename)."""

from __future__ import annotations

from typing import Final

# The messaging keys are still "development" in semantic conventions, so the semconv package keeps
# them in its incubating module (as the contrib messaging instrumentations import them).
from opentelemetry.semconv._incubating.attributes.messaging_attributes import (
    MESSAGING_DESTINATION_NAME,
    MESSAGING_OPERATION_NAME,
    MESSAGING_OPERATION_TYPE,
    MESSAGING_SYSTEM,
    MessagingOperationTypeValues,
)
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE, ErrorTypeValues
from opentelemetry.semconv.schemas import Schemas

SCHEMA_URL: Final = Schemas.V1_44_0.value
"""The semantic conventions version whose names exo_otel uses (the tracer's and meter's schema URL)."""

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
TRIGGER_START_DELAY_MS: Final = "exosphere.trigger.start_delay_ms"
EXECUTION_CPU_TIME: Final = "exosphere.execution.cpu_time"
RUN_CPU_TIME: Final = "exosphere.run.cpu_time"
RUN_EXECUTIONS: Final = "exosphere.run.executions"
NODE_INPUTS: Final = "exosphere.node.inputs"
# The state manager side's own (it alone sees stored statuses, schedules and manual retries).
RUN_STATUS: Final = "exosphere.run.status"
RUN_STATES_PREFIX: Final = "exosphere.run.states."
STATE_STATUS: Final = "exosphere.state.status"
STATE_SCHEDULE_WAIT_MS: Final = "exosphere.state.schedule_wait_ms"
"""How long the state waited for its ``enqueue_after`` before any runtime could take it."""
LINK_RETRY_OF: Final = "exosphere.link.retry_of"
NODE_OUTPUTS: Final = "exosphere.node.outputs"

__all__ = [
    "ERROR_TYPE",
    "MESSAGING_DESTINATION_NAME",
    "MESSAGING_OPERATION_NAME",
    "MESSAGING_OPERATION_TYPE",
    "MESSAGING_SYSTEM",
]

ERROR_TYPE_OTHER: Final = ErrorTypeValues.OTHER.value
"""``error.type`` of a failure that has no exception to name."""

# Semantic conventions for messaging: the trigger sends a message (the run) to the graph, an
# execution processes one (the state) taken from a node's queue.
MESSAGING_SYSTEM_EXOSPHERE: Final = "exosphere"
OPERATION_TRIGGER: Final = "trigger"
OPERATION_EXECUTE: Final = "execute"

OUTCOME_EXECUTED: Final = "executed"
OUTCOME_ERRORED: Final = "errored"
OUTCOME_PRUNED: Final = "pruned"
OUTCOME_REQUEUED: Final = "requeued"
# The process stopped (signal, cancellation, BaseException) before the state reported an outcome.
OUTCOME_INTERRUPTED: Final = "interrupted"

EVENT_PRUNED: Final = "exosphere.pruned"
EVENT_REQUEUED: Final = "exosphere.requeued"
EVENT_REQUEUE_DELAY_MS: Final = "exosphere.requeue.delay_ms"

# Baggage entries set inside an execute span (the same keys as the span attributes).
BAGGAGE_KEYS: Final = (RUN_ID, NAMESPACE, GRAPH_NAME, NODE_IDENTIFIER, STATE_ID)


def trigger_messaging(graph_name: str) -> dict[str, str]:
    """The messaging attributes of a ``trigger`` (PRODUCER) span."""
    return {
        MESSAGING_SYSTEM: MESSAGING_SYSTEM_EXOSPHERE,
        MESSAGING_OPERATION_TYPE: MessagingOperationTypeValues.SEND.value,
        MESSAGING_OPERATION_NAME: OPERATION_TRIGGER,
        MESSAGING_DESTINATION_NAME: graph_name,
    }


def execute_messaging() -> dict[str, str]:
    """The messaging attributes of an ``execute`` (CONSUMER) span. No destination or message id: the
    span's name says the node (the queue), its parent the state (the message)."""
    return {
        MESSAGING_SYSTEM: MESSAGING_SYSTEM_EXOSPHERE,
        MESSAGING_OPERATION_TYPE: MessagingOperationTypeValues.PROCESS.value,
        MESSAGING_OPERATION_NAME: OPERATION_EXECUTE,
    }
