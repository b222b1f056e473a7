"""Pytest fixtures for the embedded state manager, and helpers to drive the real exospherehost SDK."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
from exospherehost import BaseNode, Runtime, StateManager

from exo_otel_demo.embedded import EmbeddedStateManager
from helpers.servers import POLL_INTERVAL as POLL_INTERVAL  # re-exported: the tests poll alike
from helpers.servers import EmbeddedServer


@pytest.fixture
async def state_manager() -> AsyncIterator[EmbeddedStateManager]:
    """An embedded state manager on a free port of 127.0.0.1, answering exactly as upstream."""
    async with EmbeddedStateManager() as sm:
        yield sm


@pytest.fixture
async def state_manager_with_context() -> AsyncIterator[EmbeddedStateManager]:
    """An embedded state manager whose enqueue answers carry run_id, graph_name and parents."""
    async with EmbeddedStateManager(expose_run_context=True) as sm:
        yield sm


async def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy, and return that; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def wait_for_run(sm: EmbeddedStateManager, run_id: str, timeout: float = 15.0) -> str:
    """Wait until the run has no pending state; return its status (SUCCESS or FAILED)."""
    status = await wait_until(lambda: (s := sm.run_status(run_id)) != "PENDING" and s, timeout)
    return str(status)


def sdk_state_manager(sm: EmbeddedStateManager, namespace: str) -> StateManager:
    """The SDK's StateManager pointed at ``sm``."""
    return StateManager(namespace=namespace, state_manager_uri=sm.uri, key=sm.api_key)


def running_runtime(
    sm: EmbeddedStateManager,
    namespace: str,
    nodes: Sequence[type[BaseNode]],
    name: str = "test-runtime",
    workers: int = 4,
    batch_size: int = 16,
) -> contextlib.AbstractAsyncContextManager[Runtime]:
    """A real exospherehost Runtime polling ``sm``; registered when the block starts, cancelled after
    (`servers.Server.runtime`, on the embedded server)."""
    return EmbeddedServer(sm).runtime(namespace, nodes, name=name, workers=workers, batch_size=batch_size)


def free_port() -> int:
    """A port of 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
