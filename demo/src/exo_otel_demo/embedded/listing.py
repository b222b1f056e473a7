"""The listing endpoints: registered nodes and graph templates of a namespace, and all namespaces.

Their records are shaped as upstream serialises its database documents (``_id``, timestamps, every
field). Graph secrets show as opaque tokens, never in clear, as upstream shows them encrypted.
"""

from __future__ import annotations

import base64
import hashlib

from exo_otel_demo.embedded.models import GraphTemplate, JsonDict, RegisteredNode, isoformat
from exo_otel_demo.embedded.store import Database


def _node_document(node: RegisteredNode) -> JsonDict:
    return {
        "_id": node.id,
        "created_at": isoformat(node.created_at),
        "updated_at": isoformat(node.updated_at),
        "name": node.name,
        "namespace": node.namespace,
        "runtime_name": node.runtime_name,
        "runtime_namespace": node.namespace,
        "inputs_schema": node.inputs_schema,
        "outputs_schema": node.outputs_schema,
        "secrets": list(node.secrets),
    }


def _sealed(graph: GraphTemplate, name: str, value: str) -> str:
    """An opaque token in place of a secret's value (it cannot be turned back into the value)."""
    nonce = hashlib.blake2b(f"{graph.id}/{name}".encode(), digest_size=12).digest()
    tag = hashlib.blake2b(value.encode(), key=nonce, digest_size=16).digest()
    return base64.urlsafe_b64encode(nonce + tag).decode()


def _graph_document(graph: GraphTemplate) -> JsonDict:
    return {
        "_id": graph.id,
        "created_at": isoformat(graph.created_at),
        "updated_at": isoformat(graph.updated_at),
        "name": graph.name,
        "namespace": graph.namespace,
        "nodes": [node.to_json() for node in graph.nodes],
        "validation_status": graph.validation_status.value,
        "validation_errors": list(graph.validation_errors),
        "secrets": {name: _sealed(graph, name, value) for name, value in graph.secrets.items()},
        "triggers": [dict(trigger) for trigger in graph.triggers],
        "retry_policy": graph.retry_policy.to_json(),
        "store_config": graph.store_config.to_json(),
    }


def list_nodes(db: Database, namespace: str) -> JsonDict:
    with db.lock:
        nodes = [_node_document(node) for (ns, _), node in db.nodes.items() if ns == namespace]
    return {"namespace": namespace, "count": len(nodes), "nodes": nodes}


def list_graphs(db: Database, namespace: str) -> JsonDict:
    with db.lock:
        graphs = [_graph_document(graph) for (ns, _), graph in db.graphs.items() if ns == namespace]
    return {"namespace": namespace, "count": len(graphs), "templates": graphs}


def list_namespaces(db: Database) -> JsonDict:
    """Namespaces that have registered nodes, sorted (upstream groups its registered nodes)."""
    with db.lock:
        namespaces = sorted({ns for ns, _ in db.nodes if ns})
    return {"namespaces": namespaces, "count": len(namespaces)}
