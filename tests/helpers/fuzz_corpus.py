"""A deterministic corpus of malformed requests to the state manager API (seeded, so both servers get
the very same requests in the same order).

Each request starts from a valid one for its endpoint and breaks it in one way: a field dropped or
given a value of another type, an extra field, deep nesting, a body that is not JSON or not UTF-8, a
truncated document, another content type, a wrong key, an id or a page that does not parse. Paths
name ``{state}`` (a real state id of the server), ``{ns}`` (the test's namespace) and ``{run}``.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

TEXT = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
Body = dict[str, Any]


@dataclass(frozen=True)
class FuzzRequest:
    method: str
    path: str  # with {ns}, {state} and {run} to fill in
    raw: bytes | None  # None: no body at all
    content_type: str | None
    wrong_key: bool
    how: str  # what was broken, for messages


def _node(identifier: str, **extra: Any) -> Body:
    return {
        "node_name": "Step",
        "namespace": "{ns}",
        "identifier": identifier,
        "inputs": {"text": "x"},
        **extra,
    }


def _valid_bodies() -> list[tuple[str, str, Callable[[], Any]]]:
    return [
        (
            "PUT",
            "nodes/",
            lambda: {
                "runtime_name": "r",
                "nodes": [{"name": "Fuzzed", "inputs_schema": TEXT, "outputs_schema": TEXT, "secrets": []}],
            },
        ),
        (
            "PUT",
            "graph/fuzzed",
            lambda: {
                "secrets": {"s": "v"},
                "nodes": [
                    _node("a", next_nodes=["b"]),
                    _node(
                        "b",
                        inputs={"text": "${{ a.outputs.text }}"},
                        unites={"identifier": "a", "strategy": "ALL_DONE"},
                    ),
                ],
                "retry_policy": {"max_retries": 1, "strategy": "FIXED", "backoff_factor": 10},
                "store_config": {"required_keys": ["k"], "default_values": {"d": "1"}},
                "triggers": [{"type": "CRON", "value": {"expression": "0 0 1 1 *"}}],
            },
        ),
        (
            "POST",
            "graph/g/trigger",
            lambda: {"inputs": {"text": "t"}, "store": {"k": "v"}, "start_delay": 600000},
        ),
        ("POST", "states/enqueue", lambda: {"nodes": ["Nobody"], "batch_size": 1}),
        ("POST", "state/{state}/executed", lambda: {"outputs": [{"text": "a"}, {"text": "b"}]}),
        ("POST", "state/{state}/errored", lambda: {"error": "boom"}),
        ("POST", "state/{state}/prune", lambda: {"data": {"why": "because"}}),
        ("POST", "state/{state}/re-enqueue-after", lambda: {"enqueue_after": 600000}),
        ("POST", "state/{state}/manual-retry", lambda: {"fanout_id": "f"}),
    ]


GET_PATHS = [
    "graph/g",
    "graph/missing",
    "nodes/",
    "graphs/",
    "state/{state}/secrets",
    "runs/{page}/{size}",
    "states/run/{run}/graph",
    "graph/g/run/{run}/node/{state}",
]


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(12 if depth < 3 else 8)
    return [
        lambda: None,
        lambda: rng.choice([True, False]),
        lambda: rng.randint(-(2**31), 2**31),
        lambda: rng.uniform(-1e6, 1e6),
        lambda: "",
        lambda: " \t",
        lambda: rng.choice(["x", "store", "é✓", "a.b"]),
        lambda: (
            "${{ "
            + rng.choice(["a.outputs", "store", "x.outputs.y", "a.b.c.d", ""])
            + rng.choice(["", " }}"])
        ),
        lambda: [_random_value(rng, depth + 1) for _ in range(rng.randrange(3))],
        lambda: {
            rng.choice(["a", "", " ", "k.k"]): _random_value(rng, depth + 1) for _ in range(rng.randrange(3))
        },
        lambda: [[[]]],
        lambda: {"nested": {"deeper": [1, {"x": None}]}},
    ][kind]()


def _paths_in(document: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document a value sits (keys of objects, indexes of lists)."""
    found: list[tuple[Any, ...]] = []
    items = (
        document.items()
        if isinstance(document, dict)
        else enumerate(document)
        if isinstance(document, list)
        else []
    )
    for key, value in items:
        found.append((*prefix, key))
        found.extend(_paths_in(value, (*prefix, key)))
    return found


def _mutate(rng: random.Random, body: Any) -> tuple[Any, str]:
    places = _paths_in(body)
    if not places:
        return _random_value(rng), "replaced the body"
    place = rng.choice(places)
    parent = body
    for step in place[:-1]:
        parent = parent[step]
    choice = rng.randrange(4)
    if choice == 0 and isinstance(parent, dict):
        del parent[place[-1]]
        return body, f"dropped {place}"
    if choice == 1 and isinstance(parent, dict):
        parent[rng.choice(["extra", "", "__proto__"])] = _random_value(rng)
        return body, f"added a field beside {place}"
    if choice == 2:
        nested: Any = "x"
        for _ in range(rng.choice([20, 60, 95, 400])):
            nested = [nested]
        parent[place[-1]] = nested
        return body, f"nested {place} deeply"
    parent[place[-1]] = _random_value(rng)
    return body, f"changed {place}"


def _raw_variant(rng: random.Random, text: str) -> tuple[bytes, str]:
    choice = rng.randrange(7)
    if choice == 0:
        return text[: rng.randrange(max(1, len(text)))].encode(), "truncated"
    if choice == 1:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))), "random bytes"
    if choice == 2:
        return text.encode("utf-16"), "UTF-16"
    if choice == 3:
        return (text + rng.choice([" x", ",", "}", "\x00"])).encode(), "trailing garbage"
    if choice == 4:
        return text.replace('"', "'").encode(), "single quotes"
    if choice == 5:
        return b"[" * rng.choice([500, 5000, 50000]), "deep brackets"
    return text.encode() + b"\xff\xfe", "bad UTF-8"


def corpus(size: int = 1200, seed: int = 20261122) -> list[FuzzRequest]:
    """``size`` malformed requests, the same for a given seed."""
    rng = random.Random(seed)
    endpoints = _valid_bodies()
    requests: list[FuzzRequest] = []
    while len(requests) < size:
        wrong_key = rng.random() < 0.05
        content_type: str | None = "application/json"
        if rng.random() < 0.08:
            content_type = rng.choice(
                [None, "text/plain", "application/json; charset=utf-8", "application/x+json"]
            )
        if rng.random() < 0.12:
            path = rng.choice(GET_PATHS).replace("{page}", rng.choice(["0", "-1", "x", "1.5", "99"]))
            path = path.replace("{size}", rng.choice(["0", "-3", "y", "10"]))
            if rng.random() < 0.5:
                path = path.replace("{state}", rng.choice(["nope", "0" * 24, "ZZ" * 12, "0" * 23, "{state}"]))
            requests.append(FuzzRequest("GET", path, None, None, wrong_key, "GET with odd path parts"))
            continue
        method, path, make = rng.choice(endpoints)
        if "{state}" in path and rng.random() < 0.25:
            path = path.replace(
                "{state}", rng.choice(["nope", "0" * 24, "A" * 24, "g" * 24, "%20", "{state}"])
            )
        body, how = _mutate(rng, copy.deepcopy(make()))
        if rng.random() < 0.3:
            raw, how = _raw_variant(rng, json.dumps(body))
        elif rng.random() < 0.05:
            raw, how = b"", "empty body"
        else:
            raw = json.dumps(body).encode()
        requests.append(FuzzRequest(method, path, raw, content_type, wrong_key, how))
    return requests
