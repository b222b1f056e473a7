"""Helpers for the conformance tests that speak HTTP directly: a namespace per test, node registration,
graph bodies, and upstream's fixed answers."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from exospherehost import GraphNodeModel, UnitesModel

from helpers.servers import Server

TEXT_SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
MISSING_ID = "0" * 24
INTERNAL_ERROR = {
    "success": False,
    "detail": "internal server error, please reach out to support team at nivedit@exosphere.host",
}
NOT_AN_OBJECT = "Input should be a valid dictionary or object to extract fields from"
NOT_AN_INT = "Input should be a valid integer, unable to parse string as an integer"
DOCS = "https://errors.pydantic.dev/2.11/v/value_error"


def new_namespace(prefix: str = "conf") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Client:
    """Requests in one namespace of a server under test."""

    def __init__(self, server: Server, namespace: str) -> None:
        self.server = server
        self.namespace = namespace

    async def call(self, method: str, path: str, body: Any = None, *, key: str | None = None,
                   raw: bytes | None = None) -> tuple[int, Any]:
        full = path if path.startswith("/") else f"/v0/namespace/{self.namespace}/{path}"
        return await self.server.request(method, full, body, raw=raw, key=key)

    async def register(self, *names: str, secrets: tuple[str, ...] = ()) -> None:
        nodes = [{"name": n, "inputs_schema": TEXT_SCHEMA, "outputs_schema": TEXT_SCHEMA,
                  "secrets": list(secrets)} for n in names]
        status, answer = await self.call("PUT", "nodes/", {"runtime_name": "r", "nodes": nodes})
        assert status == 200, answer

    def node(self, identifier: str, inputs: dict[str, Any] | None = None, next_nodes: list[str] | None = None,
             unites: str | None = None, name: str = "Step") -> dict[str, Any]:
        return GraphNodeModel(
            node_name=name, namespace=self.namespace, identifier=identifier,
            inputs=inputs if inputs is not None else {"text": "x"},
            next_nodes=next_nodes, unites=None if unites is None else UnitesModel(identifier=unites),
        ).model_dump(mode="json")

    async def settled_graph(self, name: str, timeout: float = 10.0) -> Any:
        """``GET /graph/{name}`` once its validation is no longer PENDING."""
        deadline = time.monotonic() + timeout
        while True:
            status, graph = await self.call("GET", f"graph/{name}")
            assert status == 200, graph
            if graph["validation_status"] != "PENDING":
                return graph
            assert time.monotonic() < deadline, f"graph {name} still PENDING after {timeout} s"
            await asyncio.sleep(0.05)

    async def put_graph(self, name: str, nodes: list[dict[str, Any]], **extra: Any) -> tuple[int, Any]:
        return await self.call("PUT", f"graph/{name}", {"secrets": {}, "nodes": nodes, **extra})


def graph_error(message: str, graph_repr_tail: str = "ues={}), 'triggers': []}", name: str = "g",
                namespace: str = "") -> str:
    """Upstream's 400 text for a whole-graph check that failed on a new graph named ``name``."""
    head = f"{{'name': {name!r}, 'namespace': {namespace!r}, 'nodes': ["[:25]
    return ("Error validating graph template: 1 validation error for GraphTemplate\n"
            f"  Value error, {message} [type=value_error, input_value={head}...{graph_repr_tail}, "
            f"input_type=dict]\n    For further information visit {DOCS}")


def nodes_error(message: str, input_repr: str) -> str:
    """Upstream's 400 text for a failed check of the node list."""
    return ("Error validating graph template: 1 validation error for GraphTemplate\nnodes\n"
            f"  Value error, {message} [type=value_error, input_value={input_repr}, input_type=list]\n"
            f"    For further information visit {DOCS}")
