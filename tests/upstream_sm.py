"""The real upstream Exosphere state manager in a subprocess, through ../shared/upstream-state-manager.

Tests that need it take the ``upstream_sm`` fixture (or call `upstream_state_manager`); where the
upstream source is not available (CI cannot fetch it) they are skipped with the reason.
Set ``UPSTREAM_GIT_DIR`` (a git directory of exospherehost/exospherehost) or ``UPSTREAM_SRC`` (an
extracted ``state-manager`` folder); ``EXO_OTEL_UPSTREAM_SM`` overrides where ``run.sh`` is.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

REPO = Path(__file__).resolve().parent.parent


def _find_run_sh() -> Path:
    """``shared/upstream-state-manager/run.sh`` beside the checkout (or beside a folder above it)."""
    if os.environ.get("EXO_OTEL_UPSTREAM_SM"):
        return Path(os.environ["EXO_OTEL_UPSTREAM_SM"])
    for folder in REPO.parents:
        candidate = folder / "shared" / "upstream-state-manager" / "run.sh"
        if candidate.is_file():
            return candidate
    return REPO.parent / "shared" / "upstream-state-manager" / "run.sh"


RUN_SH = _find_run_sh()
START_TIMEOUT = 600.0  # a first build of the server venv takes a minute or two


def upstream_unavailable() -> str | None:
    """Why the real server cannot run here, or None when it can."""
    if not RUN_SH.is_file():
        return f"the upstream state manager runner is not at {RUN_SH} (set EXO_OTEL_UPSTREAM_SM)"
    if not (os.environ.get("UPSTREAM_GIT_DIR") or os.environ.get("UPSTREAM_SRC")):
        return ("the upstream state manager source is not available: set UPSTREAM_GIT_DIR (a git directory "
                "of exospherehost/exospherehost) or UPSTREAM_SRC; see README, 'The state manager side'")
    return None


def require_upstream() -> None:
    """Skip the calling test when the real server cannot run here."""
    reason = upstream_unavailable()
    if reason is not None:
        pytest.skip(reason)


@dataclass(frozen=True)
class UpstreamServer:
    """A running real state manager: one URI per instance, all sharing one database."""

    uris: tuple[str, ...]
    api_key: str
    process: subprocess.Popen[str]

    @property
    def uri(self) -> str:
        return self.uris[0]


@contextlib.contextmanager
def upstream_state_manager(
    instances: int = 1, *, pip: str | None = None, preload: str | None = None, **env: str
) -> Iterator[UpstreamServer]:
    """Start ``run.sh serve`` on 127.0.0.1; yield the server; stop it (SIGTERM, then kill).

    Args:
        instances: uvicorn servers of the one app sharing one database (UPSTREAM_SM_INSTANCES).
        pip: extra pip arguments for the server venv (UPSTREAM_SM_PIP), e.g. ``-e /path/to/exo_otel``.
        preload: ``module:function`` called in the server before the app is imported.
        env: more environment for the server (OTEL_* for instance).
    """
    require_upstream()
    key = secrets.token_hex(12)
    server_env = {**os.environ, "STATE_MANAGER_SECRET": key, "UPSTREAM_SM_INSTANCES": str(instances),
                  "UPSTREAM_SM_MAX_SECONDS": "3600", **env}
    if pip is not None:
        server_env["UPSTREAM_SM_PIP"] = pip
    if preload is not None:
        server_env["UPSTREAM_SM_PRELOAD"] = preload
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"exo-otel-upstream-{os.getpid()}-{key[:6]}.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen(["bash", str(RUN_SH), "serve"], stdout=subprocess.PIPE, stderr=stderr,
                                text=True, env=server_env, start_new_session=True)
    try:
        uris = _read_uris(proc, instances, log)
        # Keep draining stdout: a console exporter in the server would otherwise block on it.
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # type: ignore[union-attr]
        yield UpstreamServer(tuple(uris), key, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _read_uris(proc: subprocess.Popen[str], instances: int, log: Path) -> list[str]:
    uris: list[str] = []
    timer = threading.Timer(START_TIMEOUT, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("UPSTREAM_SM_URI="):
                uris.append(line.strip().split("=", 1)[1])
                if len(uris) == instances:
                    return uris
    finally:
        timer.cancel()
    raise RuntimeError(f"the upstream state manager ended early (rc={proc.wait()}); its log:\n"
                       + log.read_text()[-4000:])


async def state_histories(uri: str, run_id: str | None = None) -> list[dict[str, Any]]:
    """Every state of a run (or of all runs) with its status history, from the launcher's debug route."""
    params = {"run_id": run_id} if run_id is not None else {}
    async with aiohttp.ClientSession() as session, session.get(
        f"{uri}/__upstream_debug/state_history", params=params
    ) as response:
        response.raise_for_status()
        body = await response.json()
    return list(body["states"])


@pytest.fixture(scope="session")
def upstream_sm() -> Iterator[UpstreamServer]:
    """One plain real state manager for the whole session (tests use namespaces of their own)."""
    with upstream_state_manager() as server:
        yield server
