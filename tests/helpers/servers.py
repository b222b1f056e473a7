"""One interface over the two state managers the conformance suite runs against: embedded and upstream.

A test takes the ``server`` fixture, parametrised over ``embedded`` (always) and ``upstream`` (the real
state manager through tests/helpers/upstream_harness, marked ``upstream`` and skipped with the reason
where its source is missing). Both answer the same HTTP API; this module adds what a test needs besides:
the state histories of a run (the embedded server's inspection API, or the launcher's debug route),
the run status by upstream's rule, and waits for node registration and for the end of a run.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from exospherehost import BaseNode, Runtime, StateManager

from exo_otel_demo.embedded import EmbeddedStateManager
from helpers.upstream_sm import UpstreamServer, state_histories, upstream_unavailable

POLL_INTERVAL = 0.05
PENDING_STATUSES = frozenset({"CREATED", "QUEUED", "EXECUTED"})
FAILED_STATUSES = frozenset({"ERRORED", "NEXT_CREATED_ERROR"})


@dataclass(frozen=True)
class StateRecord:
    """One state of a run as both servers can tell it: its id, node and status history."""

    id: str
    identifier: str
    node_name: str
    statuses: tuple[str, ...]
    times: tuple[int, ...]  # epoch ms of each status change

    @property
    def status(self) -> str:
        return self.statuses[-1]


def run_status_of(states: Sequence[StateRecord]) -> str:
    """Upstream's rule: PENDING while a state is CREATED/QUEUED/EXECUTED, else FAILED if one errored."""
    current = {state.status for state in states}
    if current & PENDING_STATUSES:
        return "PENDING"
    if current & FAILED_STATUSES:
        return "FAILED"
    return "SUCCESS"


def by_identifier(states: Sequence[StateRecord]) -> dict[str, list[StateRecord]]:
    """The states grouped by node identifier, in creation order."""
    grouped: dict[str, list[StateRecord]] = {}
    for state in states:
        grouped.setdefault(state.identifier, []).append(state)
    return grouped


class Server(abc.ABC):
    """A running state manager under test."""

    kind: str

    @property
    @abc.abstractmethod
    def uri(self) -> str: ...

    @property
    @abc.abstractmethod
    def api_key(self) -> str: ...

    @abc.abstractmethod
    async def histories(self, run_id: str) -> list[StateRecord]:
        """Every state of the run, in creation order, with its status history."""

    async def run_status(self, run_id: str) -> str:
        return run_status_of(await self.histories(run_id))

    async def details(self, namespace: str, graph: str, run_id: str, state_id: str) -> Any:
        """``GET .../graph/{graph}/run/{run_id}/node/{state_id}``: inputs, outputs, parents, error."""
        path = f"/v0/namespace/{namespace}/graph/{graph}/run/{run_id}/node/{state_id}"
        status, body = await self.request("GET", path)
        assert status == 200, body
        return body

    def client(self, namespace: str) -> StateManager:
        """The SDK's StateManager pointed at this server."""
        return StateManager(namespace=namespace, state_manager_uri=self.uri, key=self.api_key)

    async def request(
        self, method: str, path: str, body: Any = None, *, raw: bytes | None = None, key: str | None = None,
        content_type: str | None = "application/json",
    ) -> tuple[int, Any]:
        """Send one request (``path`` after the URI) and return the status and the decoded body
        (the text where it is not JSON). ``raw`` is sent as is, with ``content_type`` if not None."""
        headers = {"x-api-key": self.api_key if key is None else key}
        if raw is not None and content_type is not None:
            headers["content-type"] = content_type
        data: Any = raw
        if raw is None and body is not None:
            data = aiohttp.JsonPayload(body)
        async with aiohttp.ClientSession() as session, session.request(
            method, f"{self.uri}{path}", data=data, headers=headers
        ) as response:
            text = await response.text()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text

    async def registered(self, namespace: str) -> set[str]:
        """Names of the nodes registered in ``namespace`` (``GET /nodes/``)."""
        status, body = await self.request("GET", f"/v0/namespace/{namespace}/nodes/")
        assert status == 200, body
        return {node["name"] for node in body["nodes"]}

    async def wait_registered(self, namespace: str, names: set[str], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not names <= await self.registered(namespace):
            if time.monotonic() > deadline:
                raise AssertionError(f"{sorted(names)} not registered in {namespace} within {timeout} s")
            await asyncio.sleep(POLL_INTERVAL)

    async def wait_for_run(
        self,
        run_id: str,
        timeout: float = 30.0,
        until: Callable[[list[StateRecord]], bool] | None = None,
        settle: float = 0.3,
    ) -> list[StateRecord]:
        """Wait until the run is no longer PENDING (and ``until`` holds), with no change for ``settle`` s.

        Upstream inserts a unites state after it marked the last branch SUCCESS, so a run can read
        SUCCESS for a moment before its join exists: the settle time waits that moment out.
        """
        deadline = time.monotonic() + timeout
        last: list[StateRecord] | None = None
        stable_since = time.monotonic()
        while True:
            states = await self.histories(run_id)
            done = bool(states) and run_status_of(states) != "PENDING" and (until is None or until(states))
            if states != last:
                last, stable_since = states, time.monotonic()
            elif done and time.monotonic() - stable_since >= settle:
                return states
            if time.monotonic() > deadline:
                summary = [(s.identifier, s.statuses) for s in states]
                raise AssertionError(f"run {run_id} did not end within {timeout} s: {summary}")
            await asyncio.sleep(POLL_INTERVAL)

    @contextlib.asynccontextmanager
    async def runtime(
        self,
        namespace: str,
        nodes: Sequence[type[BaseNode]],
        name: str = "conformance-runtime",
        workers: int = 4,
        batch_size: int = 16,
    ) -> AsyncIterator[Runtime]:
        """A real exospherehost Runtime polling this server; its nodes registered when the block starts."""
        runtime = Runtime(
            namespace=namespace, name=name, nodes=list(nodes), state_manager_uri=self.uri, key=self.api_key,
            workers=workers, batch_size=batch_size, poll_interval=POLL_INTERVAL,
        )
        task = runtime.start()
        assert task is not None
        try:
            registered = self.wait_registered(namespace, {node.__name__ for node in nodes})
            waiter = asyncio.ensure_future(registered)
            await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                waiter.cancel()
                task.result()  # registration failed: raise its error here
            await waiter
            yield runtime
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class EmbeddedServer(Server):
    kind = "embedded"

    def __init__(self, sm: EmbeddedStateManager) -> None:
        self.sm = sm

    @property
    def uri(self) -> str:
        return self.sm.uri

    @property
    def api_key(self) -> str:
        return self.sm.api_key

    async def registered(self, namespace: str) -> set[str]:
        return self.sm.registered_nodes(namespace)

    async def histories(self, run_id: str) -> list[StateRecord]:
        return [
            StateRecord(view.id, view.identifier, view.node_name, tuple(str(s.value) for s in view.statuses),
                        tuple(change.at_ms for change in view.history))
            for view in self.sm.states(run_id)
        ]


class UpstreamServerUnderTest(Server):
    kind = "upstream"

    def __init__(self, server: UpstreamServer) -> None:
        self.server = server

    @property
    def uri(self) -> str:
        return self.server.uri

    @property
    def api_key(self) -> str:
        return self.server.api_key

    async def histories(self, run_id: str) -> list[StateRecord]:
        return [
            StateRecord(
                str(state["state_id"]), state["identifier"], state["node_name"],
                tuple(step["status"] for step in state["history"]),
                tuple(int(step["t_ms"]) for step in state["history"]),
            )
            for state in await state_histories(self.uri, run_id)
        ]


SERVER_KINDS = [pytest.param("embedded"), pytest.param("upstream", marks=pytest.mark.upstream)]


@pytest.fixture(params=SERVER_KINDS)
async def server(request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    """The state manager under test: the embedded one, then the real upstream one (skipped without it)."""
    if request.param == "embedded":
        async with EmbeddedStateManager() as sm:
            yield EmbeddedServer(sm)
        return
    reason = upstream_unavailable()
    if reason is not None:
        pytest.skip(reason)
    yield UpstreamServerUnderTest(request.getfixturevalue("upstream_sm"))
