"""The checks upstream makes when a graph is upserted, answered 400 before anything is stored.

Upstream validates its graph template model on construction (and again on save): field checks on
the name, the namespace and the nodes (unique identifiers, next nodes that exist), then, in order and
stopping at the first failure, the unites targets, one root and connectedness, acyclicity, and the
placeholders of every input. Its answer is ``Error validating graph template: `` followed by the text
of a pydantic validation error; `describe` writes that text the same way.

The parents of a node are computed as upstream's graph template computes them, by a depth-first walk
from the root: a unites node takes the united node's parents plus the united node, and passes exactly
that on, so a child of a unites node does not count the unites node itself among its parents.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from exo_otel_demo.embedded.models import NodeTemplate, RetryPolicy, StoreConfig
from exo_otel_demo.embedded.templates import STORE, TemplateError, parse

PREFIX = "Error validating graph template: "
_DOCS = "https://errors.pydantic.dev/2.11/v/value_error"  # the pydantic release upstream's lock pins


class GraphInvalid(ValueError):
    """A graph upstream refuses at upsert time; ``detail`` is its whole 400 answer text."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True)
class FieldProblem:
    """One pydantic-style error: the field (None for the whole model), message and input shown."""

    loc: str | None
    message: str
    input_repr: str
    input_type: str


def _shorten(text: str) -> str:
    return text if len(text) <= 50 else f"{text[:25]}...{text[-24:]}"


def describe(problems: Sequence[FieldProblem], title: str = "GraphTemplate") -> str:
    """The text of a pydantic ValidationError holding ``problems``, prefixed as upstream answers it."""
    count = len(problems)
    lines = [f"{count} validation error{'s' if count != 1 else ''} for {title}"]
    for problem in problems:
        if problem.loc is not None:
            lines.append(problem.loc)
        lines.append(
            f"  Value error, {problem.message} [type=value_error, "
            f"input_value={_shorten(problem.input_repr)}, input_type={problem.input_type}]"
        )
        lines.append(f"    For further information visit {_DOCS}")
    return PREFIX + "\n".join(lines)


# Python reprs of upstream's models, as they appear in its messages.


def node_repr(node: NodeTemplate) -> str:
    unites = "None"
    if node.unites is not None:
        strategy = node.unites.strategy.value
        unites = (f"Unites(identifier={node.unites.identifier!r}, "
                  f"strategy=<UnitesStrategyEnum.{strategy}: {strategy!r}>)")
    return (f"NodeTemplate(node_name={node.node_name!r}, namespace={node.namespace!r}, "
            f"identifier={node.identifier!r}, inputs={node.inputs!r}, next_nodes={node.next_nodes or []!r}, "
            f"unites={unites})")


def _graph_repr(name: str, namespace: str, nodes: Sequence[NodeTemplate], policy: RetryPolicy,
                store: StoreConfig, triggers: Sequence[dict[str, object]]) -> str:
    strategy = policy.strategy.value
    policy_repr = (f"RetryPolicyModel(max_retries={policy.max_retries}, strategy=<RetryStrategy.{strategy}: "
                   f"{strategy!r}>, backoff_factor={policy.backoff_factor}, exponent={policy.exponent}, "
                   f"max_delay={policy.max_delay!r})")
    store_repr = (f"StoreConfig(required_keys={store.required_keys!r}, "
                  f"default_values={store.default_values!r})")
    trigger_reprs = [f"Trigger(type=<TriggerTypeEnum.{t['type']}: {t['type']!r}>, value={t['value']!r})"
                     for t in triggers]
    return (f"{{'name': {name!r}, 'namespace': {namespace!r}, "
            f"'nodes': [{', '.join(map(node_repr, nodes))}], "
            "'validation_status': <GraphTemplateValidationStatus.PENDING: 'PENDING'>, "
            f"'validation_errors': [], 'retry_policy': {policy_repr}, 'store_config': {store_repr}, "
            f"'triggers': [{', '.join(trigger_reprs)}]}}")


# The walk from the root that gives every node its parents and the nodes on its paths.


def root_of(nodes: Sequence[NodeTemplate]) -> NodeTemplate:
    """The one node with no incoming edge (a unites counts as one); ValueError otherwise."""
    in_degree = {node.identifier: 0 for node in nodes}
    for node in nodes:
        for target in node.next_nodes or []:
            in_degree[target] += 1
        if node.unites is not None:
            in_degree[node.identifier] += 1
    found = [node for node in nodes if in_degree[node.identifier] == 0]
    if len(found) != 1:
        listed = ", ".join(node_repr(node) for node in found)
        raise ValueError("There should be exactly one root node in the graph but found "
                         f"{len(found)} nodes with zero in-degree: [{listed}]")
    return found[0]


def lineage(nodes: Sequence[NodeTemplate]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Parents and path members of every node, walking depth-first from the root as upstream does.

    A node seen again only gathers the new parents and path; its children are not walked again. A
    unites node whose united node was not walked yet waits for it, and is then only given parents.
    """
    root = root_of(nodes).identifier
    by_id = {node.identifier: node for node in nodes}
    parents: dict[str, set[str]] = {identifier: set() for identifier in by_id}
    paths: dict[str, set[str]] = {identifier: set() for identifier in by_id}
    seen: set[str] = set()
    waiting: dict[str, list[str]] = {}

    def walk(identifier: str, inherited: set[str], path: set[str]) -> None:
        parents[identifier] |= inherited
        paths[identifier] |= path
        if identifier in seen:
            return
        seen.add(identifier)
        node = by_id[identifier]
        if node.unites is None:
            handed_down = inherited | {identifier}
        elif node.unites.identifier in seen:
            handed_down = parents[node.unites.identifier] | {node.unites.identifier}
            parents[identifier] = set(handed_down)
        else:
            waiting.setdefault(node.unites.identifier, []).append(identifier)
            return
        for late in waiting.pop(identifier, []):
            walk(late, handed_down, paths[late])
        for child in node.next_nodes or []:
            walk(child, handed_down, path | {identifier})

    try:
        walk(root, set(), set())
        if waiting:
            raise ValueError(f"Graph is disconnected at: {waiting}")
    except (ValueError, KeyError, RecursionError) as exc:
        reason = "maximum recursion depth exceeded" if isinstance(exc, RecursionError) else str(exc)
        raise ValueError(f"Error building dependency graph: {reason}") from None
    return parents, paths


def _field_problems(nodes: Sequence[NodeTemplate], nodes_repr: str, name: str, namespace: str,
                    secret_names: Sequence[str]) -> list[FieldProblem]:
    problems: list[FieldProblem] = []
    if not name.strip():
        problems.append(FieldProblem("name", "Name cannot be empty", repr(name), "str"))
    if not namespace.strip():
        problems.append(FieldProblem("namespace", "Namespace cannot be empty", repr(namespace), "str"))
    identifiers: set[str] = set()
    repeated = []
    for node in nodes:
        if node.identifier in identifiers:
            repeated.append(f"Node identifier {node.identifier} is not unique")
        identifiers.add(node.identifier)
    unknown = [f"Node identifier {target} does not exist in the graph"
               for node in nodes for target in node.next_nodes or [] if target not in identifiers]
    if repeated or unknown:
        problems.append(FieldProblem("nodes", "\n".join(repeated or unknown), nodes_repr, "list"))
    if any(not secret for secret in secret_names):
        shown = "{" + ", ".join(f"{secret!r}: '<encrypted>'" for secret in secret_names) + "}"
        problems.append(FieldProblem("secrets", "Secrets cannot be empty", shown, "dict"))
    return problems


def _unites_errors(nodes: Sequence[NodeTemplate]) -> list[str]:
    identifiers = {node.identifier for node in nodes}
    errors = []
    for node in nodes:
        if node.unites is None:
            continue
        target = node.unites.identifier
        if target not in identifiers:
            errors.append(f"Node {node.identifier} has an unites target {target} that does not exist")
        if target == node.identifier:
            errors.append(
                f"Node {node.identifier} has an unites target {target} that is the same as the node itself"
            )
    return errors


def _input_errors(
    nodes: Sequence[NodeTemplate], parents: dict[str, set[str]], store: StoreConfig
) -> list[str]:
    errors = []
    for node in nodes:
        for value in node.inputs.values():
            if not isinstance(value, str):
                errors.append(f"Input {value} is not a string")
                continue
            try:
                placeholders = parse(value).placeholders
            except TemplateError as exc:
                errors.append(f"Error creating dependent string for input {value} check syntax string: {exc}")
                continue
            sources = list(dict.fromkeys(p.source for p in placeholders if p.source != STORE))
            keys = list(dict.fromkeys(p.field for p in placeholders if p.source == STORE))
            for source in sources:
                if source not in parents.get(node.identifier, set()):
                    errors.append(f"Input {value} depends on {source} but {source} is not a parent of "
                                  f"{node.identifier}")
            for key in keys:
                if key not in store.required_keys and key not in store.default_values:
                    errors.append(f"Input {value} depends on {key} but {key} is not a required key or a "
                                  "default value")
    return errors


def _model_error(nodes: Sequence[NodeTemplate], store: StoreConfig) -> str | None:
    """The first failing whole-graph check's message, in upstream's order, or None."""
    errors = _unites_errors(nodes)
    if errors:
        return "\n".join(errors)
    try:
        root = root_of(nodes).identifier
        parents, paths = lineage(nodes)
    except ValueError as exc:
        return str(exc)
    errors = [f"Node {node.identifier} is not connected to the root node"
              for node in nodes if node.identifier != root and root not in parents[node.identifier]]
    if errors:
        return "\n".join(errors)
    errors = [f"Node {node.identifier} is not acyclic"
              for node in nodes if node.identifier in paths[node.identifier]]
    if errors:
        return "\n".join(errors)
    errors = _input_errors(nodes, parents, store)
    return "\n".join(errors) if errors else None


def check_graph(name: str, namespace: str, nodes: Sequence[NodeTemplate], secret_names: Sequence[str],
                policy: RetryPolicy, store: StoreConfig, triggers: Sequence[dict[str, object]],
                replacing: str | None = None) -> None:
    """Raise GraphInvalid with upstream's 400 text when upstream would refuse this upsert.

    ``replacing`` is the id of the graph when it exists already: upstream then validates the stored
    document, which shows as a plain dict (its id first, the store config last) in the message.
    """
    if replacing is not None:
        nodes_repr = "[" + ", ".join(repr(node.to_json() | {"next_nodes": node.next_nodes or []})
                                     for node in nodes) + "]"
    else:
        nodes_repr = "[" + ", ".join(node_repr(node) for node in nodes) + "]"
    problems = _field_problems(nodes, nodes_repr, name, namespace, [])
    if not problems:
        message = _model_error(nodes, store)
        if message is not None:
            graph_repr = _graph_repr(name, namespace, nodes, policy, store, triggers)
            if replacing is not None:
                graph_repr = (f"{{'id': ObjectId('{replacing}'), 'name': {name!r}, "
                              f"'namespace': {namespace!r}, 'store_config': {store.to_json()!r}}}")
            problems = [FieldProblem(None, message, graph_repr, "dict")]
    if not problems:  # upstream checks the secret names only when it saves a graph otherwise valid
        problems = _field_problems(nodes, nodes_repr, name, namespace, secret_names)
    if problems:
        raise GraphInvalid(describe(problems))
