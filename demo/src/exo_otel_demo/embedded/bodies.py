"""Request bodies, checked by hand into typed records; errors come out as FastAPI would word them.

The checks follow pydantic's lax mode for the field types the API uses (an int field takes ``"3"``,
``3.0`` or ``true``; a str field takes only strings), so a client sees the same 422 answers as from
the upstream service.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from exo_otel_demo.embedded.checker import MISSING, Checker, Loc, decode_json, start
from exo_otel_demo.embedded.models import (
    JsonDict,
    NodeTemplate,
    RetryPolicy,
    RetryStrategy,
    StoreConfig,
    Unites,
    UnitesStrategy,
)

__all__ = [
    "decode_json",
    "fields_parser",
    "parse_fields",
    "parse_register_nodes",
    "parse_trigger",
    "parse_upsert_graph",
]


@dataclass(frozen=True)
class NodeRegistration:
    name: str
    inputs_schema: JsonDict
    outputs_schema: JsonDict
    secrets: list[str]


@dataclass(frozen=True)
class RegisterNodesBody:
    runtime_name: str
    nodes: list[NodeRegistration]


def parse_register_nodes(document: Any) -> RegisterNodesBody:
    """Body of ``PUT /nodes/``."""
    c, body = start(document)
    runtime_name = c.string(c.field(body, "runtime_name", ()), ("runtime_name",))
    raw_nodes = c.field(body, "nodes", ())
    nodes: list[NodeRegistration] = []
    items = c.listing(raw_nodes, ("nodes",)) if raw_nodes is not MISSING else None
    for index, item in enumerate(items or []):
        loc: Loc = ("nodes", index)
        node = c.model(item, loc)
        if node is None:
            continue
        name = c.string(c.field(node, "name", loc), (*loc, "name"))
        inputs = c.mapping(c.field(node, "inputs_schema", loc), (*loc, "inputs_schema"))
        outputs = c.mapping(c.field(node, "outputs_schema", loc), (*loc, "outputs_schema"))
        secrets = c.str_list(c.field(node, "secrets", loc), (*loc, "secrets"))
        if name is not None and inputs is not None and outputs is not None and secrets is not None:
            nodes.append(NodeRegistration(name, inputs, outputs, secrets))
    c.done()
    assert runtime_name is not None
    return RegisterNodesBody(runtime_name, nodes)


def _trimmed_name(c: Checker, value: Any, loc: Loc, empty: str, reserved: str | None = None) -> str | None:
    """A name upstream trims; ``empty`` is its message for a blank one, ``reserved`` for ``store``."""
    text = c.string(value, loc)
    if text is None:
        return None
    if not text.strip():
        c.value_error(loc, empty, value)
        return None
    if reserved is not None and text.strip() == "store":
        c.value_error(loc, reserved, value)
        return None
    return text.strip()


def _next_nodes(c: Checker, raw: Any, loc: Loc) -> list[str]:
    """Trimmed next node identifiers; none is ``[]``, as upstream stores it."""
    listed = c.str_list(raw, loc) if raw is not None else []
    if listed is None:
        return []
    problems: list[str] = []
    result: list[str] = []
    for name in listed:
        name = name.strip()
        if not name:
            problems.append("Next node identifier cannot be empty")
        elif name in result:
            problems.append(f"Next node identifier {name} is not unique")
        else:
            result.append(name)
    if problems:
        c.value_error(loc, "\n".join(problems), raw)
    return result


def _unites(c: Checker, raw: Any, loc: Loc) -> Unites | None:
    fields = c.model(raw, loc)
    if fields is None:
        return None
    target = c.string(c.field(fields, "identifier", loc), (*loc, "identifier"))
    strategy = c.choice(fields.get("strategy", "ALL_SUCCESS"), (*loc, "strategy"), UnitesStrategy)
    if target is None or strategy is None:
        return None
    if not target.strip():
        c.value_error(loc, "Unites identifier cannot be empty", raw)
        return None
    return Unites(target.strip(), strategy)


def _node_template(c: Checker, item: Any, loc: Loc) -> NodeTemplate | None:
    node = c.model(item, loc)
    if node is None:
        return None
    node_name = _trimmed_name(
        c, c.field(node, "node_name", loc), (*loc, "node_name"), "Node name cannot be empty"
    )
    namespace = c.string(c.field(node, "namespace", loc), (*loc, "namespace"))
    identifier = _trimmed_name(
        c, c.field(node, "identifier", loc), (*loc, "identifier"), "Node identifier cannot be empty",
        "Node identifier cannot be reserved word 'store'",
    )
    inputs = c.mapping(c.field(node, "inputs", loc), (*loc, "inputs"))
    next_nodes = _next_nodes(c, node.get("next_nodes"), (*loc, "next_nodes"))
    raw_unites = node.get("unites")
    unites = None if raw_unites is None else _unites(c, raw_unites, (*loc, "unites"))
    if node_name is None or namespace is None or identifier is None or inputs is None:
        return None
    return NodeTemplate(node_name, namespace, identifier, inputs, next_nodes, unites)


def _retry_policy(c: Checker, value: Any) -> RetryPolicy | None:
    loc: Loc = ("retry_policy",)
    fields = c.model(value, loc)
    if fields is None:
        return None
    policy = RetryPolicy()
    max_retries = c.integer(fields.get("max_retries", 3), (*loc, "max_retries"), ge=0)
    strategy = c.choice(fields.get("strategy", "EXPONENTIAL"), (*loc, "strategy"), RetryStrategy)
    backoff = c.integer(fields.get("backoff_factor", 2000), (*loc, "backoff_factor"), gt=0)
    exponent = c.integer(fields.get("exponent", 2), (*loc, "exponent"), gt=0)
    raw_max = fields.get("max_delay")
    max_delay = None if raw_max is None else c.integer(raw_max, (*loc, "max_delay"), gt=0)
    if max_retries is None or strategy is None or backoff is None or exponent is None:
        return None
    if raw_max is not None and max_delay is None:
        return None
    policy.max_retries, policy.strategy, policy.backoff_factor = max_retries, strategy, backoff
    policy.exponent, policy.max_delay = exponent, max_delay
    return policy


def _store_keys(c: Checker, keys: list[str], loc: Loc, value: Any) -> list[str] | None:
    seen: list[str] = []
    problems: list[str] = []
    for key in keys:
        key = key.strip()
        if not key:
            problems.append("Key cannot be empty or contain only whitespace")
        elif "." in key:
            problems.append(f"Key '{key}' cannot contain '.' character")
        elif key in seen:
            problems.append(f"Key '{key}' is duplicated")
        else:
            seen.append(key)
    if problems:
        c.value_error(loc, "\n".join(problems), value)
        return None
    return seen


def _store_config(c: Checker, value: Any) -> StoreConfig | None:
    loc: Loc = ("store_config",)
    fields = c.model(value, loc)
    if fields is None:
        return None
    raw_required = fields.get("required_keys", [])
    raw_defaults = fields.get("default_values", {})
    required = c.str_list(raw_required, (*loc, "required_keys"))
    defaults = c.str_map(raw_defaults, (*loc, "default_values"))
    if required is not None:
        required = _store_keys(c, required, (*loc, "required_keys"), raw_required)
    if defaults is not None:
        names = _store_keys(c, list(defaults), (*loc, "default_values"), raw_defaults)
        defaults = None if names is None else {key.strip(): item for key, item in defaults.items()}
    if required is None or defaults is None:
        return None
    return StoreConfig(required, defaults)


_CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,?#LW-]+$")


def _is_cron(expression: str) -> bool:
    """Five (or six, with seconds) fields of cron syntax: close to what croniter accepts."""
    fields = expression.split()
    return len(fields) in (5, 6) and all(_CRON_FIELD.match(field) for field in fields)


def _triggers(c: Checker, value: Any) -> list[JsonDict] | None:
    items = c.listing(value, ("triggers",))
    if items is None:
        return None
    result: list[JsonDict] = []
    for index, item in enumerate(items):
        loc: Loc = ("triggers", index)
        fields = c.model(item, loc)
        if fields is None:
            continue
        kind = c.choice(c.field(fields, "type", loc), (*loc, "type"), _TriggerType)
        spec = c.mapping(fields.get("value", {}), (*loc, "value"))
        if kind is None or spec is None:
            continue
        expression = c.string(c.field(spec, "expression", loc), (*loc, "expression"))
        if expression is None:
            continue
        if not _is_cron(expression):
            c.value_error((*loc, "expression"), "Invalid cron expression", expression)
            continue
        result.append({"type": kind.value, "value": dict(spec)})
    return result


class _TriggerType(StrEnum):
    CRON = "CRON"


@dataclass(frozen=True)
class UpsertGraphBody:
    secrets: dict[str, str]
    nodes: list[NodeTemplate]
    retry_policy: RetryPolicy
    store_config: StoreConfig
    triggers: list[JsonDict]


def parse_upsert_graph(document: Any) -> UpsertGraphBody:
    """Body of ``PUT /graph/{graph}``."""
    c, body = start(document)
    secrets = c.str_map(c.field(body, "secrets", ()), ("secrets",))
    raw_nodes = c.field(body, "nodes", ())
    items = c.listing(raw_nodes, ("nodes",)) if raw_nodes is not MISSING else None
    nodes = [_node_template(c, item, ("nodes", index)) for index, item in enumerate(items or [])]
    policy = _retry_policy(c, body["retry_policy"]) if "retry_policy" in body else RetryPolicy()
    store = _store_config(c, body["store_config"]) if "store_config" in body else StoreConfig()
    triggers = _triggers(c, body["triggers"]) if "triggers" in body else []
    c.done()
    assert secrets is not None and policy is not None and store is not None and triggers is not None
    return UpsertGraphBody(secrets, [node for node in nodes if node is not None], policy, store, triggers)


@dataclass(frozen=True)
class TriggerBody:
    inputs: dict[str, str]
    store: dict[str, str]
    start_delay: int


def parse_trigger(document: Any) -> TriggerBody:
    """Body of ``POST /graph/{graph}/trigger``."""
    c, body = start(document)
    store = c.str_map(body.get("store", {}), ("store",))
    inputs = c.str_map(body.get("inputs", {}), ("inputs",))
    delay = c.integer(body.get("start_delay", 0), ("start_delay",), ge=0)
    c.done()
    assert inputs is not None and store is not None and delay is not None
    return TriggerBody(inputs, store, delay)


def parse_fields(document: Any, spec: dict[str, str]) -> JsonDict:
    """A flat body of required fields; ``spec`` maps each name to ``str``, ``int``, ``int>0``,
    ``str[]``, ``dict`` or ``dict[]``."""
    c, body = start(document)
    result: JsonDict = {}
    for name, kind in spec.items():
        value = c.field(body, name, ())
        if value is MISSING:
            continue
        loc: Loc = (name,)
        if kind == "str":
            result[name] = c.string(value, loc)
        elif kind == "int":
            result[name] = c.integer(value, loc)
        elif kind == "int>0":
            result[name] = c.integer(value, loc, gt=0)
        elif kind == "str[]":
            result[name] = c.str_list(value, loc)
        elif kind == "dict":
            result[name] = c.mapping(value, loc)
        elif kind == "dict[]":
            items = c.listing(value, loc)
            result[name] = [c.mapping(item, (name, i)) for i, item in enumerate(items or [])]
        else:  # pragma: no cover - a programming error in the caller
            raise ValueError(f"unknown field kind {kind}")
    c.done()
    return result


def fields_parser(spec: dict[str, str]) -> Callable[[Any], JsonDict]:
    """A parser of flat bodies with the fields of ``spec`` (see `parse_fields`)."""
    return lambda document: parse_fields(document, spec)
