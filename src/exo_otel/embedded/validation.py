"""Graph validation: structure, placeholders, registration of nodes, inputs and secrets."""

from __future__ import annotations

from collections.abc import Mapping

from exo_otel.embedded.models import GraphTemplate, NodeTemplate, RegisteredNode
from exo_otel.embedded.templates import TemplateError, parse


def incoming(nodes: list[NodeTemplate]) -> dict[str, list[str]]:
    """For each identifier, the identifiers naming it in ``next_nodes``."""
    result: dict[str, list[str]] = {node.identifier: [] for node in nodes}
    for node in nodes:
        for target in node.next_nodes or []:
            if target in result:
                result[target].append(node.identifier)
    return result


def roots(nodes: list[NodeTemplate]) -> list[NodeTemplate]:
    """Nodes with no incoming edge; a uniting node counts its united ancestor as one."""
    into = incoming(nodes)
    return [node for node in nodes if not into[node.identifier] and node.unites is None]


def ancestors(nodes: list[NodeTemplate]) -> dict[str, set[str]]:
    """Every identifier's ancestors, as the parents of its states will name them.

    A uniting node descends from the node it unites (its states take that state's lineage);
    any other node from every node that lists it in ``next_nodes``. Computed as a fixed point,
    so a cyclic graph still terminates.
    """
    into = incoming(nodes)
    known = {node.identifier for node in nodes}
    result: dict[str, set[str]] = {identifier: set() for identifier in known}
    changed = True
    while changed:
        changed = False
        for node in nodes:
            if node.unites is not None:
                sources = [node.unites.identifier] if node.unites.identifier in known else []
            else:
                sources = into[node.identifier]
            wanted = set(result[node.identifier])
            for source in sources:
                wanted |= result[source] | {source}
            if wanted != result[node.identifier]:
                result[node.identifier] = wanted
                changed = True
    return result


def _on_cycle(nodes: list[NodeTemplate]) -> list[str]:
    edges: dict[str, set[str]] = {node.identifier: set() for node in nodes}
    for node in nodes:
        edges[node.identifier].update(t for t in node.next_nodes or [] if t in edges)
        if node.unites is not None and node.unites.identifier in edges:
            edges[node.unites.identifier].add(node.identifier)
    cyclic: list[str] = []
    for start in edges:
        seen: set[str] = set()
        frontier = list(edges[start])
        while frontier:
            current = frontier.pop()
            if current in seen:
                continue
            seen.add(current)
            frontier.extend(edges[current])
        if start in seen:
            cyclic.append(start)
    return cyclic


def structural_errors(graph: GraphTemplate) -> list[str]:
    """Errors in the shape of the graph and in its placeholders."""
    errors: list[str] = []
    nodes = graph.nodes
    identifiers = [node.identifier for node in nodes]
    known = set(identifiers)
    for identifier in sorted({i for i in identifiers if identifiers.count(i) > 1}):
        errors.append(f"Identifier {identifier} is used by more than one node")
    for node in nodes:
        for target in node.next_nodes or []:
            if target not in known:
                errors.append(f"Node {node.identifier} lists next node {target}, which is not in the graph")
        if node.unites is not None:
            if node.unites.identifier not in known:
                errors.append(
                    f"Node {node.identifier} unites {node.unites.identifier}, which is not in the graph"
                )
            elif node.unites.identifier == node.identifier:
                errors.append(f"Node {node.identifier} cannot unite itself")
    if errors:
        return errors
    found = roots(nodes)
    if len(found) != 1:
        names = ", ".join(node.identifier for node in found) or "none"
        errors.append(f"A graph needs exactly one root node (no incoming edge); found {len(found)}: {names}")
    for identifier in _on_cycle(nodes):
        errors.append(f"Node {identifier} is on a cycle")
    lineage = ancestors(nodes)
    if len(found) == 1:
        root = found[0].identifier
        for node in nodes:
            if node.identifier != root and root not in lineage[node.identifier]:
                errors.append(f"Node {node.identifier} is not connected to the root node {root}")
    errors.extend(_placeholder_errors(graph, lineage))
    return errors


def _placeholder_errors(graph: GraphTemplate, lineage: Mapping[str, set[str]]) -> list[str]:
    errors: list[str] = []
    store = graph.store_config
    for node in graph.nodes:
        for name, value in node.inputs.items():
            if not isinstance(value, str):
                errors.append(f"Input {name} of node {node.identifier} must be a string template")
                continue
            try:
                template = parse(value)
            except TemplateError as exc:
                errors.append(f"Input {name} of node {node.identifier}: {exc}")
                continue
            for placeholder in template.placeholders:
                if placeholder.is_store:
                    if (
                        placeholder.field not in store.required_keys
                        and placeholder.field not in store.default_values
                    ):
                        errors.append(
                            f"Input {name} of node {node.identifier} reads store key {placeholder.field}, "
                            "which is neither required nor given a default"
                        )
                elif placeholder.source not in lineage[node.identifier]:
                    errors.append(
                        f"Input {name} of node {node.identifier} reads outputs of {placeholder.source}, "
                        f"which is not an ancestor of {node.identifier}"
                    )
    return errors


def _is_string_property(schema: object) -> bool:
    return isinstance(schema, dict) and schema.get("type") == "string"


def registration_errors(
    graph: GraphTemplate, registry: Mapping[tuple[str, str], RegisteredNode]
) -> list[str]:
    """Errors against the registered nodes: unknown nodes, inputs, output fields, secrets."""
    errors: list[str] = []
    needed_secrets: set[str] = set()
    for node in graph.nodes:
        registered = registry.get((node.namespace, node.node_name))
        if registered is None:
            errors.append(f"Node {node.node_name} in namespace {node.namespace} is not registered")
            continue
        needed_secrets.update(registered.secrets)
        properties = registered.inputs_schema.get("properties", {})
        for field in registered.input_fields():
            if not _is_string_property(properties.get(field)):
                errors.append(f"Input {field} of node {node.node_name} is not declared as a string")
            elif field not in node.inputs:
                errors.append(
                    f"Input {field} of node {node.node_name} has no template in node {node.identifier}"
                )
        for value in node.inputs.values():
            if not isinstance(value, str):
                continue
            try:
                placeholders = parse(value).placeholders
            except TemplateError:
                continue
            for placeholder in placeholders:
                if placeholder.is_store:
                    continue
                errors.extend(_output_errors(graph, registry, placeholder.source, placeholder.field))
    for secret in sorted(needed_secrets - set(graph.secrets)):
        errors.append(f"Secret {secret} is needed by a node of the graph but the graph does not set it")
    return errors


def _output_errors(
    graph: GraphTemplate, registry: Mapping[tuple[str, str], RegisteredNode], source: str, field: str
) -> list[str]:
    source_node = graph.node(source)
    if source_node is None:
        return [f"Placeholder reads node {source}, which is not in the graph"]
    registered = registry.get((source_node.namespace, source_node.node_name))
    if registered is None:
        return []  # already reported as unregistered
    properties = registered.outputs_schema.get("properties", {})
    if field not in registered.output_fields():
        return [f"Output {field} does not exist on node {source_node.node_name}"]
    if not _is_string_property(properties.get(field)):
        return [f"Output {field} of node {source_node.node_name} is not declared as a string"]
    return []


def validate(graph: GraphTemplate, registry: Mapping[tuple[str, str], RegisteredNode]) -> list[str]:
    """All errors of a graph; empty when it is valid."""
    errors = structural_errors(graph)
    errors.extend(registration_errors(graph, registry))
    return errors
