"""The real upstream Exosphere state manager for the tests, through the project's harness (upstream_harness).

Tests that need it take the ``upstream_sm`` fixture (or call `upstream_state_manager`); where the upstream
source cannot be had they are skipped with the reason. In CI the source comes from the snapshot beside the
checkout (``../shared/upstream-src``); a contributor sets ``UPSTREAM_GIT_DIR`` (a git directory of
exospherehost/exospherehost), ``UPSTREAM_SRC`` or ``UPSTREAM_ARCHIVE`` (see upstream_harness.source).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from helpers.upstream_harness import (
    Settings,
    UpstreamServer,
    in_process_server,
    secantus_database,
    source_unavailable,
)

REPO = Path(__file__).resolve().parents[2]
# The database of the in-process servers: "memory" (the in-process one) or "secantus" (a SecantusDB each).
DATABASE = os.environ.get("EXO_OTEL_UPSTREAM_DB", "memory")
# The real-server tests run wherever the upstream source is found; EXO_OTEL_UPSTREAM=0 leaves them out.
ENABLED = os.environ.get("EXO_OTEL_UPSTREAM", "1") != "0"
__all__ = ["REPO", "UpstreamServer", "require_upstream", "state_histories", "upstream_state_manager",
           "upstream_unavailable"]


def upstream_unavailable() -> str | None:
    """Why the real server cannot run here, or None when it can."""
    if not ENABLED:
        return "EXO_OTEL_UPSTREAM=0 leaves the real-server tests out"
    return source_unavailable()


def require_upstream() -> None:
    """Skip the calling test when the real server cannot run here."""
    reason = upstream_unavailable()
    if reason is not None:
        pytest.skip(reason)


@contextlib.contextmanager
def upstream_state_manager(
    instances: int = 1, *, pip: str | None = None, preload: str | None = None, history: bool = True,
    **env: str,
) -> Iterator[UpstreamServer]:
    """The real app on the in-process database, ``instances`` servers sharing it; stopped afterwards.

    Args:
        instances: uvicorn servers of the one app sharing one database.
        pip: extra pip arguments for the server venv, e.g. ``-e /path/to/exo_otel``.
        preload: ``module:function`` called in the server before the app is imported.
        history: record every State's status history (`state_histories`); off for large loads.
        env: more environment for the server (OTEL_* for instance).
    """
    require_upstream()
    with contextlib.ExitStack() as stack:
        settings = Settings()
        if DATABASE == "secantus":
            settings = Settings(mongo_uri=stack.enter_context(secantus_database()).uri)
        yield stack.enter_context(in_process_server(
            instances, pip=tuple((pip or "").split()), preload=(preload,) if preload else (),
            history=history, settings=settings, **env,
        ))


async def state_histories(uri: str, run_id: str | None = None) -> list[dict[str, Any]]:
    """Every state of a run (or of all runs) with its status history, from the harness's route."""
    params = {"run_id": run_id} if run_id is not None else {}
    async with aiohttp.ClientSession() as session, session.get(
        f"{uri}/__harness/states", params=params
    ) as answer:
        answer.raise_for_status()
        body = await answer.json()
    assert body["enabled"], "the server was started with history=False"
    return list(body["states"])


@pytest.fixture(scope="session")
def upstream_sm() -> Iterator[UpstreamServer]:
    """One plain real state manager for the whole session (tests use namespaces of their own)."""
    with upstream_state_manager() as server:
        yield server
