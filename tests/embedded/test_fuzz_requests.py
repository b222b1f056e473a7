"""A fuzz corpus of 1,200 malformed requests: the embedded server never answers 500 except where upstream
does, and (against the real server) answers what upstream answers."""

from __future__ import annotations

import collections
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from exo_otel_demo.embedded import EmbeddedStateManager
from exo_otel_demo.embedded.documents import MAX_DOCUMENT_DEPTH, nesting
from helpers.conformance_http import INTERNAL_ERROR, TEXT_SCHEMA
from helpers.fuzz_corpus import FuzzRequest, corpus
from helpers.servers import EmbeddedServer, Server, UpstreamServerUnderTest
from helpers.upstream_sm import UpstreamServer

CORPUS = corpus()
_OBJECT_ID = re.compile(r"[0-9a-fA-F]{24}")
_NON_FINITE = re.compile(rb"\bNaN\b|Infinity")


def body_nesting(request: FuzzRequest) -> int:
    """How deeply the request's JSON body nests (0 when it is no JSON)."""
    try:
        return nesting(json.loads(request.raw or b"null"))
    except (ValueError, RecursionError):
        return 0


def upstream_fails_here(request: FuzzRequest, state_id: str) -> bool:
    """Where upstream answers its generic 500: a state id that is no ObjectId (once the body passed),
    the secrets of anything but a known state, a NaN or an Infinity it has to echo in an error, a body
    that is no UTF-8 under another content type, a document nested deeper than MongoDB stores."""
    match = re.fullmatch(r"state/([^/]*)/(\w[\w-]*)", request.path)
    if match is not None:
        given = match.group(1).replace("{state}", state_id)
        if match.group(2) == "secrets" or not _OBJECT_ID.fullmatch(given):
            return True
    if request.raw is None:
        return False
    if request.content_type in (None, "text/plain"):
        try:
            request.raw.decode()
        except UnicodeDecodeError:
            return True
    return _NON_FINITE.search(request.raw) is not None or body_nesting(request) > MAX_DOCUMENT_DEPTH


class Target:
    """A server with the fixtures the corpus refers to: a namespace, a graph, a run and a queued state."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.ns = f"fuzz-{uuid.uuid4().hex[:8]}"
        self.run_id = ""
        self.state_id = ""

    async def prepare(self) -> None:
        async def call(method: str, path: str, body: Any) -> Any:
            status, answer = await self.server.request(method, f"/v0/namespace/{self.ns}/{path}", body)
            assert status in (200, 201), answer
            return answer

        node = {"name": "Step", "inputs_schema": TEXT_SCHEMA, "outputs_schema": TEXT_SCHEMA, "secrets": []}
        await call("PUT", "nodes/", {"runtime_name": "r", "nodes": [node]})
        nodes = [
            {
                "node_name": "Step",
                "namespace": self.ns,
                "identifier": "a",
                "inputs": {"text": "${{ store.k }}"},
                "next_nodes": ["b"],
            },
            {
                "node_name": "Step",
                "namespace": self.ns,
                "identifier": "b",
                "inputs": {"text": "${{ a.outputs.text }}"},
            },
        ]
        await call(
            "PUT",
            "graph/g",
            {"secrets": {"s": "v"}, "nodes": nodes, "store_config": {"required_keys": ["k"]}},
        )
        for _ in range(100):
            if (await call("GET", "graph/g", None))["validation_status"] == "VALID":
                break
        self.run_id = (await call("POST", "graph/g/trigger", {"store": {"k": "v"}}))["run_id"]
        queued = await call("POST", "states/enqueue", {"nodes": ["Step"], "batch_size": 1})
        self.state_id = queued["states"][0]["state_id"]

    async def send(self, request: FuzzRequest) -> tuple[int, Any]:
        path = request.path.replace("{state}", self.state_id).replace("{run}", self.run_id)
        raw = None if request.raw is None else request.raw.replace(b"{ns}", self.ns.encode())
        key = "wrong-key" if request.wrong_key else None
        return await self.server.request(
            request.method,
            f"/v0/namespace/{self.ns}/{path}",
            raw=raw,
            key=key,
            content_type=request.content_type,
        )


@pytest.fixture
async def embedded_target() -> Iterator[Target]:  # type: ignore[misc]
    async with EmbeddedStateManager() as sm:
        target = Target(EmbeddedServer(sm))
        await target.prepare()
        yield target


async def test_no_500_from_the_embedded_server_except_where_upstream_answers_500(
    embedded_target: Target,
) -> None:
    assert len(CORPUS) >= 1000
    statuses: collections.Counter[int] = collections.Counter()
    for request in CORPUS:
        status, body = await embedded_target.send(request)
        statuses[status] += 1
        if status == 500:
            assert body == INTERNAL_ERROR, (request, body)
            assert upstream_fails_here(request, embedded_target.state_id), (request, body)
        assert status in (200, 201, 400, 401, 404, 405, 409, 422, 500), (request, status, body)
    print(
        f"\nfuzz corpus: {len(CORPUS)} requests to the embedded server, "
        f"statuses {dict(sorted(statuses.items()))}"
    )
    assert statuses[422] > 300 and statuses[500] > 0


def _shape(answer: tuple[int, Any]) -> tuple[int, str]:
    """Status and body with ids, run ids, timestamps, due times and sealed secret values blanked."""
    body = answer[1]
    if isinstance(body, dict) and isinstance(body.get("templates"), list):  # GET graphs/: sealed secrets
        templates = [{**t, "secrets": sorted(t.get("secrets", {}))} for t in body["templates"]]
        body = {**body, "templates": templates}
    text = json.dumps(body, sort_keys=True)
    text = re.sub(r"\b1[0-9]{12}\b", "<ms>", text)
    text = re.sub(r"[0-9a-f]{24}", "<id>", text)
    text = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<uuid>", text)
    text = re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+", "<time>", text)
    text = re.sub(r"fuzz-[0-9a-f]{8}", "<ns>", text)
    return answer[0], text


@pytest.mark.upstream
async def test_the_corpus_gets_upstreams_answers(upstream_sm: UpstreamServer) -> None:
    async with EmbeddedStateManager() as sm:
        embedded, upstream = Target(EmbeddedServer(sm)), Target(UpstreamServerUnderTest(upstream_sm))
        await embedded.prepare()
        await upstream.prepare()
        same_status = same_body = skipped = 0
        differences: list[str] = []
        body_differences: list[str] = []
        error_bodies: list[str] = []
        for request in CORPUS:
            if body_nesting(request) > MAX_DOCUMENT_DEPTH:
                # MongoDB refuses such a document (upstream's 500, as the embedded server answers); the
                # stand-in database stores it and then fails every later read of it: not comparable.
                skipped += 1
                continue
            ours, theirs = await embedded.send(request), await upstream.send(request)
            if ours[0] == 500:
                assert theirs[0] == 500, (request, ours, theirs)
            same_status += ours[0] == theirs[0]
            same_body += _shape(ours) == _shape(theirs)
            if ours[0] == theirs[0] and _shape(ours) != _shape(theirs):
                mine, upstreams = _shape(ours)[1], _shape(theirs)[1]
                pairs = zip(mine + " ", upstreams + "  ", strict=False)
                at = next(i for i, (a, b) in enumerate(pairs) if a != b)
                (error_bodies if ours[0] >= 400 else body_differences).append(
                    f"{request.method} {request.path} ({request.how}), from character {at}: "
                    f"{mine[max(0, at - 150):at + 150]} vs upstream {upstreams[max(0, at - 150):at + 150]}"
                )
            if ours[0] != theirs[0]:
                differences.append(
                    f"{request.method} {request.path} ({request.how}): {ours} vs upstream {theirs}"
                )
    print(
        f"\nfuzz corpus against upstream: {len(CORPUS) - skipped} requests compared ({skipped} nested deeper "
        f"than MongoDB stores, skipped), same status {same_status}, same body {same_body}"
    )
    for line in differences[:20]:
        print("  differs:", line[:400])
    for line in body_differences[:5]:
        print("  success body differs:", line[:600])
    assert not differences
    assert not error_bodies, error_bodies[:5]
    assert not body_differences, body_differences[:5]
