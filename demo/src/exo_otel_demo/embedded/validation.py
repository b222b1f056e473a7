"""Background graph validation against the registered nodes, with upstream's messages.

The structure of a graph is checked when it is upserted (`graph_checks`); what is left for the
background, as upstream does, is: every node registered, its secrets set by the graph, and its
inputs: each registered input a required string with a template in the node, each output read a
declared string. Errors come in upstream's order: unknown nodes, then secrets, then inputs.
"""

from __future__ import annotations

from collections.abc import Mapping

from exo_otel_demo.embedded.models import GraphTemplate, NodeTemplate, RegisteredNode
from exo_otel_demo.embedded.templates import TemplateError, parse

Registry = Mapping[tuple[str, str], RegisteredNode]


def _string_fields(schema: object) -> dict[str, bool]:
    """Each property of a JSON schema, and whether it is a required string (what upstream accepts)."""
    if not isinstance(schema, dict):
        return {}
    properties = schema.get("properties")
    required = schema.get("required")
    if not isinstance(properties, dict):
        return {}
    needed = set(required) if isinstance(required, list) else set()
    return {
        name: isinstance(spec, dict) and spec.get("type") == "string" and name in needed
        for name, spec in properties.items()
    }


def _registered(graph: GraphTemplate, registry: Registry) -> list[RegisteredNode]:
    found: dict[tuple[str, str], RegisteredNode] = {}
    for node in graph.nodes:
        registered = registry.get((node.namespace, node.node_name))
        if registered is not None:
            found[(node.namespace, node.node_name)] = registered
    return list(found.values())


def _missing_nodes(graph: GraphTemplate, registry: Registry) -> list[str]:
    wanted = dict.fromkeys((node.node_name, node.namespace) for node in graph.nodes)
    return [f"Node {name} in namespace {namespace} does not exist."
            for name, namespace in wanted if (namespace, name) not in registry]


def _missing_secrets(graph: GraphTemplate, registered: list[RegisteredNode]) -> list[str]:
    needed = dict.fromkeys(secret for node in registered for secret in node.secrets)
    return [f"Secret {secret} is required but not present in the graph template"
            for secret in needed if secret not in graph.secrets]


def _node_input_errors(graph: GraphTemplate, node: NodeTemplate, registry: Registry) -> list[str]:
    registered = registry.get((node.namespace, node.node_name))
    where = f"in node {node.node_name} in namespace {node.namespace}"
    if registered is None:
        return [f"Node {node.node_name} in namespace {node.namespace} does not exist"]
    errors = []
    for field, is_string in _string_fields(registered.inputs_schema).items():
        if not is_string:
            errors.append(f"Input {field} {where} is not a string")
        elif field not in node.inputs:
            errors.append(f"Input {field} {where} is not present in the graph template")
    for value in node.inputs.values():
        try:
            placeholders = parse(str(value)).placeholders
        except TemplateError:
            continue  # refused when the graph was upserted
        for source, field in dict.fromkeys((p.source, p.field) for p in placeholders if not p.is_store):
            errors.extend(_output_errors(graph, source, field, registry))
    return errors


def _output_errors(graph: GraphTemplate, source: str, field: str, registry: Registry) -> list[str]:
    source_node = graph.node(source)
    if source_node is None:
        return [f"Node {source} does not exist in the graph template"]
    registered = registry.get((source_node.namespace, source_node.node_name))
    where = f"in node {source_node.node_name} in namespace {source_node.namespace}"
    if registered is None:
        return [f"Node {source_node.node_name} in namespace {source_node.namespace} does not exist"]
    outputs = _string_fields(registered.outputs_schema)
    if field not in outputs:
        return [f"Field {field} {where} does not exist"]
    if not outputs[field]:
        return [f"Field {field} {where} is not a string"]
    return []


def validate(graph: GraphTemplate, registry: Registry) -> list[str]:
    """All errors of a graph against the registered nodes; empty when it is valid."""
    errors = _missing_nodes(graph, registry)
    errors.extend(_missing_secrets(graph, _registered(graph, registry)))
    for node in graph.nodes:
        errors.extend(_node_input_errors(graph, node, registry))
    return errors
