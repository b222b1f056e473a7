"""Start the unmodified upstream state manager, bounded in time, on 127.0.0.1; stop what was started.

Two shapes:
- `in_process_server`: the in-process database, N uvicorn servers of one app in one process (serve.py);
  fast, and it records every State's status history.
- `uvicorn_server`: a real process tree on a wire-protocol database (`database.secantus_database`):
  ``uvicorn app.main:app --workers N``, under ``opentelemetry-instrument`` when asked, as the deploy
  image starts it (which runs upstream's run.py, that is uvicorn with N workers, under the launcher;
  run.py binds 0.0.0.0:8000, so the harness gives uvicorn the same arguments with a loopback port).
  Several such servers on one database are several independent state manager processes.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .source import state_manager_source, work_dir
from .venvs import server_python

SERVE = Path(__file__).with_name("serve.py")
START_TIMEOUT = 900.0  # a first build of the server venv takes a minute or two on a loaded machine
STOP_TIMEOUT = 20.0


@dataclass(frozen=True)
class Settings:
    """What every process of one deployment must share: the API key, the secrets key, the database."""

    api_key: str = field(default_factory=lambda: secrets.token_hex(12))
    encryption_key: str = field(
        default_factory=lambda: base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    )
    mongo_uri: str = "mongodb://in-process"
    database_name: str = field(default_factory=lambda: f"exosphere-{secrets.token_hex(4)}")

    def env(self) -> dict[str, str]:
        return {"STATE_MANAGER_SECRET": self.api_key, "SECRETS_ENCRYPTION_KEY": self.encryption_key,
                "MONGO_URI": self.mongo_uri, "MONGO_DATABASE_NAME": self.database_name}


@dataclass(frozen=True)
class UpstreamServer:
    """A running real state manager: one URI per instance (all on one database), its process and log."""

    uris: tuple[str, ...]
    settings: Settings
    process: subprocess.Popen[str]
    log: Path

    @property
    def uri(self) -> str:
        return self.uris[0]

    @property
    def api_key(self) -> str:
        return self.settings.api_key

    @property
    def pid(self) -> int:
        return self.process.pid


# Kills a process group once the process that started it is gone; ends with the group.
_WATCHDOG = """
import os, signal, sys, time
parent, group = int(sys.argv[1]), int(sys.argv[2])
try:
    while os.getppid() == parent:
        time.sleep(0.5)
        os.killpg(group, 0)
    os.killpg(group, signal.SIGKILL)
except ProcessLookupError:
    pass
"""


def watch(process: subprocess.Popen[str]) -> None:
    """Make sure ``process`` (started with ``start_new_session``) and everything in its group die when
    this process does, however it dies: a test run killed outright leaves no server behind."""
    subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(process.pid)],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_env(settings: Settings, env: Mapping[str, str]) -> dict[str, str]:
    merged = {**os.environ, **settings.env(), **env}
    merged.pop("PYTHONHOME", None)
    return merged


def _log_path(kind: str) -> Path:
    folder = work_dir() / "logs"
    folder.mkdir(exist_ok=True)
    return folder / f"{kind}-{os.getpid()}-{secrets.token_hex(3)}.log"


def stop(process: subprocess.Popen[str], sig: int = signal.SIGTERM) -> int:
    """Signal the server's process group; kill it if it has not ended within STOP_TIMEOUT. Its exit code."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        return process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return process.wait(STOP_TIMEOUT)


@contextlib.contextmanager
def in_process_server(
    instances: int = 1, *, pip: Sequence[str] = (), preload: Sequence[str] = (), history: bool = True,
    max_seconds: float = 6 * 3600.0, settings: Settings | None = None, **env: str,
) -> Iterator[UpstreamServer]:
    """The real app on the in-process database, ``instances`` servers sharing it; yield; SIGTERM it.

    Args:
        instances: uvicorn servers of the one app (imitating that many processes on one database).
        pip: extra pip arguments for the server venv, e.g. ``("-e", "/abs/path/to/exo_otel")``.
        preload: ``module:function`` hooks called before the app is imported.
        history: record every State's status history (each write scans the run's states).
        max_seconds: the server stops by itself after this (a bound for a server left behind; the
            session-wide one serves the whole `make test-upstream`, over 80 minutes on a busy machine).
        env: more environment for the server (OTEL_* for instance).
    """
    settings = settings or Settings()
    python = server_python(pip)
    command = [str(python), str(SERVE), "--instances", str(instances), "--max-seconds", str(max_seconds)]
    command += [arg for hook in preload for arg in ("--preload", hook)]
    if not history:
        command.append("--no-history")
    log = _log_path("in-process")
    with log.open("w") as stderr:
        proc = subprocess.Popen(command, cwd=state_manager_source(), stdout=subprocess.PIPE, stderr=stderr,
                                text=True, env=_server_env(settings, env), start_new_session=True)
    watch(proc)
    try:
        uris = _read_lines(proc, "UPSTREAM_SM_URI=", instances, log)
        # Keep draining stdout: a console exporter in the server would otherwise block on it.
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # type: ignore[union-attr]
        yield UpstreamServer(tuple(uris), settings, proc, log)
    finally:
        stop(proc)


@contextlib.contextmanager
def uvicorn_server(
    settings: Settings, *, workers: int = 1, instrument: bool = False, pip: Sequence[str] = (),
    port: int | None = None, app: str = "app.main:app", **env: str,
) -> Iterator[UpstreamServer]:
    """``uvicorn app.main:app --workers N`` on ``settings.mongo_uri``, under the launcher if ``instrument``.

    ``app`` is the module:attribute uvicorn serves (helpers.memory_probe wraps the app, for instance).
    Yields once every worker has completed the app's startup; stops the process tree with SIGTERM.
    """
    running = start_uvicorn(settings, workers=workers, instrument=instrument, pip=pip, port=port, app=app,
                            **env)
    try:
        yield running
    finally:
        stop(running.process)


def start_uvicorn(
    settings: Settings, *, workers: int = 1, instrument: bool = False, pip: Sequence[str] = (),
    port: int | None = None, app: str = "app.main:app", **env: str,
) -> UpstreamServer:
    """Start the server as `uvicorn_server` does and return it running; the caller stops it (`stop`)."""
    python = server_python(pip)
    port = port or free_port()
    command = [str(python), "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
               "--workers", str(workers), "--log-level", "info"]
    if instrument:
        command = [str(python.parent / "opentelemetry-instrument"), *command]
    log = _log_path(f"uvicorn-{port}")
    stderr = log.open("w")
    proc = subprocess.Popen(command, cwd=state_manager_source(), stdout=stderr, stderr=subprocess.STDOUT,
                            text=True, env=_server_env(settings, env), start_new_session=True)
    watch(proc)
    stderr.close()
    try:
        _wait_started(proc, log, workers)
    except BaseException:
        stop(proc, signal.SIGKILL)
        raise
    return UpstreamServer((f"http://127.0.0.1:{port}",), settings, proc, log)


def _wait_started(proc: subprocess.Popen[str], log: Path, workers: int) -> None:
    """Until ``workers`` processes have logged uvicorn's 'Application startup complete'."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if len(re.findall(r"Application startup complete", text)) >= workers:
            return
        if proc.poll() is not None or "Application startup failed" in text:
            raise RuntimeError(f"the state manager did not start (rc={proc.poll()}); log:\n{text[-4000:]}")
        time.sleep(0.1)
    raise RuntimeError(f"the state manager did not start within {START_TIMEOUT} s; log: {log}")


def _read_lines(proc: subprocess.Popen[str], prefix: str, count: int, log: Path) -> list[str]:
    values: list[str] = []
    timer = threading.Timer(START_TIMEOUT, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(prefix):
                values.append(line.strip().split("=", 1)[1])
                if len(values) == count:
                    return values
    finally:
        timer.cancel()
    tail = log.read_text()[-4000:]
    raise RuntimeError(f"the state manager ended early (rc={proc.wait()}); its log:\n{tail}")
