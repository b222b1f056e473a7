"""The embedded server alone: no empty API key, usable IPv6 URIs, responsive during one huge request."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import aiohttp
import pytest

from exo_otel_demo.embedded import EmbeddedStateManager
from helpers.sm_fixtures import wait_until

TEXT = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}


@pytest.mark.parametrize("key", ["", "  "])
def test_an_empty_api_key_is_refused(key: str) -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        EmbeddedStateManager(api_key=key)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")
async def test_ipv6_hosts_give_usable_uris() -> None:
    async with EmbeddedStateManager(host="::1") as sm:
        assert sm.uri == f"http://[::1]:{sm.port}"
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{sm.uri}/v0/namespaces", headers={"x-api-key": sm.api_key}) as response,
        ):
            assert (response.status, await response.json()) == (200, {"namespaces": [], "count": 0})


async def test_small_requests_are_answered_while_a_huge_one_runs() -> None:
    outputs = 12_000
    async with EmbeddedStateManager() as sm, aiohttp.ClientSession() as session:
        headers = {"x-api-key": sm.api_key}
        base = f"{sm.uri}/v0/namespace/huge"
        nodes = [{"name": "Step", "inputs_schema": TEXT, "outputs_schema": TEXT, "secrets": []}]
        await session.put(f"{base}/nodes/", json={"runtime_name": "r", "nodes": nodes}, headers=headers)
        graph = [
            {
                "node_name": "Step",
                "namespace": "huge",
                "identifier": "a",
                "inputs": {"text": "x"},
                "next_nodes": ["b"],
            },
            {
                "node_name": "Step",
                "namespace": "huge",
                "identifier": "b",
                "inputs": {"text": "${{ a.outputs.text }}"},
            },
        ]
        await session.put(f"{base}/graph/g", json={"secrets": {}, "nodes": graph}, headers=headers)
        while sm.graph("huge", "g")["validation_status"] != "VALID":  # type: ignore[index]
            await asyncio.sleep(0.01)
        run_id = (await (await session.post(f"{base}/graph/g/trigger", json={}, headers=headers)).json())[
            "run_id"
        ]
        await session.post(
            f"{base}/states/enqueue", json={"nodes": ["Step"], "batch_size": 1}, headers=headers
        )
        (root,) = sm.states(run_id)
        body = json.dumps({"outputs": [{"text": str(i)} for i in range(outputs)]}).encode()
        finished: list[str] = []

        async def huge() -> None:
            async with session.post(
                f"{base}/state/{root.id}/executed",
                data=body,
                headers={**headers, "content-type": "application/json"},
            ) as response:
                assert response.status == 200
            finished.append("huge")

        async def small() -> None:
            await asyncio.sleep(0.05)  # the huge body is on its way
            async with session.get(f"{sm.uri}/v0/namespaces", headers=headers) as response:
                assert response.status == 200
            finished.append("small")

        await asyncio.gather(huge(), small())
        assert finished == ["small", "huge"]

        # The next states of the fan-out are made in steps in the background.
        def settled() -> list[Any]:
            states = sm.states(run_id)
            done = len(states) == 2 * outputs and all(
                s.status == "SUCCESS" for s in states if s.identifier == "a"
            )
            return states if done else []

        states = await wait_until(settled, timeout=60, interval=0.5)
        assert len(states) == 2 * outputs
        assert {s.status for s in states if s.identifier == "a"} == {"SUCCESS"}
        assert sorted(int(s.inputs["text"]) for s in states if s.identifier == "b") == list(range(outputs))
