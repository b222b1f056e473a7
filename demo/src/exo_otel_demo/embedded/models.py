"""In-memory records of the embedded state manager: states, runs, graph templates, registered nodes."""

from __future__ import annotations

import copy
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

JsonDict = dict[str, Any]


class StateStatus(StrEnum):
    """Status of a state, as the Exosphere API spells it."""

    CREATED = "CREATED"
    QUEUED = "QUEUED"
    EXECUTED = "EXECUTED"
    ERRORED = "ERRORED"
    NEXT_CREATED_ERROR = "NEXT_CREATED_ERROR"
    SUCCESS = "SUCCESS"
    PRUNED = "PRUNED"
    RETRY_CREATED = "RETRY_CREATED"


PENDING_STATUSES = frozenset({StateStatus.CREATED, StateStatus.QUEUED, StateStatus.EXECUTED})
FAILED_STATUSES = frozenset({StateStatus.ERRORED, StateStatus.NEXT_CREATED_ERROR})
SUCCEEDED_STATUSES = frozenset({StateStatus.SUCCESS, StateStatus.PRUNED})


class ValidationStatus(StrEnum):
    """Validation status of a graph template."""

    PENDING = "PENDING"
    VALID = "VALID"
    INVALID = "INVALID"


class UnitesStrategy(StrEnum):
    """When a uniting node may be created."""

    ALL_SUCCESS = "ALL_SUCCESS"
    ALL_DONE = "ALL_DONE"


class RetryStrategy(StrEnum):
    """Delay schedule between retries; the jitter variants randomise the base delay."""

    EXPONENTIAL = "EXPONENTIAL"
    EXPONENTIAL_FULL_JITTER = "EXPONENTIAL_FULL_JITTER"
    EXPONENTIAL_EQUAL_JITTER = "EXPONENTIAL_EQUAL_JITTER"
    LINEAR = "LINEAR"
    LINEAR_FULL_JITTER = "LINEAR_FULL_JITTER"
    LINEAR_EQUAL_JITTER = "LINEAR_EQUAL_JITTER"
    FIXED = "FIXED"
    FIXED_FULL_JITTER = "FIXED_FULL_JITTER"
    FIXED_EQUAL_JITTER = "FIXED_EQUAL_JITTER"


class RunStatus(StrEnum):
    """Status of a run, derived from the statuses of its states."""

    SUCCESS = "SUCCESS"
    PENDING = "PENDING"
    FAILED = "FAILED"


def new_object_id() -> str:
    """A 24-hex id shaped like a MongoDB ObjectId: 4 bytes of seconds, then 8 random bytes."""
    return f"{int(time.time()) & 0xFFFFFFFF:08x}{secrets.token_hex(8)}"


def new_run_id() -> str:
    """A run id: a UUID4 string."""
    return str(uuid.uuid4())


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds."""
    return int(time.time() * 1000)


def now() -> datetime:
    """A naive local timestamp at millisecond precision (what a MongoDB round trip keeps)."""
    moment = datetime.now()
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def isoformat(moment: datetime) -> str:
    """A timestamp as the API serialises it."""
    return moment.isoformat()


@dataclass
class Unites:
    """The ancestor a node waits for, and how."""

    identifier: str
    strategy: UnitesStrategy = UnitesStrategy.ALL_SUCCESS


@dataclass
class NodeTemplate:
    """One node of a graph template."""

    node_name: str
    namespace: str
    identifier: str
    inputs: JsonDict
    next_nodes: list[str] | None = None
    unites: Unites | None = None

    def to_json(self) -> JsonDict:
        unites = None
        if self.unites is not None:
            unites = {"identifier": self.unites.identifier, "strategy": self.unites.strategy.value}
        return {
            "node_name": self.node_name,
            "namespace": self.namespace,
            "identifier": self.identifier,
            "inputs": copy.deepcopy(self.inputs),
            "next_nodes": None if self.next_nodes is None else list(self.next_nodes),
            "unites": unites,
        }


@dataclass
class RetryPolicy:
    """How often and how late an errored state is retried; delays in milliseconds."""

    max_retries: int = 3
    strategy: RetryStrategy = RetryStrategy.EXPONENTIAL
    backoff_factor: int = 2000
    exponent: int = 2
    max_delay: int | None = None

    def to_json(self) -> JsonDict:
        return {
            "max_retries": self.max_retries,
            "strategy": self.strategy.value,
            "backoff_factor": self.backoff_factor,
            "exponent": self.exponent,
            "max_delay": self.max_delay,
        }


@dataclass
class StoreConfig:
    """Keys a trigger must supply to a run's store, and defaults for the others."""

    required_keys: list[str] = field(default_factory=list)
    default_values: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> JsonDict:
        return {"required_keys": list(self.required_keys), "default_values": dict(self.default_values)}


@dataclass
class GraphTemplate:
    """A graph template as stored, secrets in clear (this server keeps nothing on disk)."""

    name: str
    namespace: str
    nodes: list[NodeTemplate]
    secrets: dict[str, str]
    retry_policy: RetryPolicy
    store_config: StoreConfig
    triggers: list[JsonDict]
    created_at: datetime
    updated_at: datetime
    validation_status: ValidationStatus = ValidationStatus.PENDING
    validation_errors: list[str] = field(default_factory=list)
    # Bumped by every upsert, so a validation that finishes late cannot overwrite a newer graph.
    revision: int = 0
    id: str = field(default_factory=lambda: new_object_id())

    def node(self, identifier: str) -> NodeTemplate | None:
        for node in self.nodes:
            if node.identifier == identifier:
                return node
        return None

    def to_json(self, stored_settings: bool = True) -> JsonDict:
        """The graph as the API answers it. Upstream's ``GET /graph`` leaves out the retry policy, store
        config and triggers, so its answer shows their defaults: ``stored_settings=False`` does the same.
        """
        policy, store = self.retry_policy, self.store_config
        if not stored_settings:
            policy, store = RetryPolicy(), StoreConfig()
        return {
            "nodes": [node.to_json() for node in self.nodes],
            "secrets": {name: True for name in self.secrets},
            "retry_policy": policy.to_json(),
            "store_config": store.to_json(),
            "triggers": copy.deepcopy(self.triggers) if stored_settings else [],
            "created_at": isoformat(self.created_at),
            "updated_at": isoformat(self.updated_at),
            "validation_status": self.validation_status.value,
            "validation_errors": list(self.validation_errors),
        }


@dataclass
class RegisteredNode:
    """A node a runtime registered: its schemas and the secrets it needs."""

    name: str
    namespace: str
    runtime_name: str
    inputs_schema: JsonDict
    outputs_schema: JsonDict
    secrets: list[str]
    id: str = field(default_factory=lambda: new_object_id())
    created_at: datetime = field(default_factory=lambda: now())
    updated_at: datetime = field(default_factory=lambda: now())

    def input_fields(self) -> list[str]:
        properties = self.inputs_schema.get("properties")
        return list(properties) if isinstance(properties, dict) else []

    def output_fields(self) -> list[str]:
        properties = self.outputs_schema.get("properties")
        return list(properties) if isinstance(properties, dict) else []


@dataclass(frozen=True, slots=True)
class StatusChange:
    """One entry of a state's history: the status it took and when (epoch ms)."""

    status: StateStatus
    at_ms: int


@dataclass(slots=True)  # slots: fewer objects for the collector when a run has 100,000s of states
class State:
    """One execution of one node in one run."""

    id: str
    node_name: str
    namespace: str
    identifier: str
    graph_name: str
    run_id: str
    status: StateStatus
    inputs: JsonDict
    outputs: JsonDict = field(default_factory=dict)
    data: JsonDict = field(default_factory=dict)
    error: str | None = None
    parents: dict[str, str] = field(default_factory=dict)
    does_unites: bool = False
    enqueue_after: int = field(default_factory=now_ms)
    retry_count: int = 0
    fanout_id: str = field(default_factory=new_run_id)
    created_at: datetime = field(default_factory=now)
    updated_at: datetime = field(default_factory=now)
    history: list[StatusChange] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.history:
            self.history.append(StatusChange(self.status, now_ms()))

    def derive(self, status: StateStatus, **changes: Any) -> State:
        """A new state (new id) of the same node, run, inputs and parents: a fan-out copy or a retry."""
        return State(
            id=new_object_id(),
            node_name=self.node_name,
            namespace=self.namespace,
            identifier=self.identifier,
            graph_name=self.graph_name,
            run_id=self.run_id,
            status=status,
            inputs=dict(self.inputs),
            parents=dict(self.parents),
            **changes,
        )

    def set_status(self, status: StateStatus) -> None:
        self.status = status
        self.updated_at = now()
        self.history.append(StatusChange(status, now_ms()))


@dataclass
class Run:
    """A graph run: its id, graph and the store the trigger gave it."""

    run_id: str
    namespace: str
    graph_name: str
    store: dict[str, str]
    created_at: datetime = field(default_factory=now)
