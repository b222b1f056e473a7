"""A real wire-protocol database for the upstream server: SecantusDB in its own process, on 127.0.0.1.

SecantusDB speaks MongoDB's wire protocol over WiredTiger; separate state manager processes share it as
they would share a MongoDB. ``storage`` is ``":memory:"`` (gone when it stops) or a folder that persists
across restarts. Stop the state managers before the database: one whose database is gone hangs.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .processes import watch
from .source import work_dir
from .venvs import tools_python

START_TIMEOUT = 60.0
# Runs in the tools venv: start the server, say where it listens, serve until stdin closes.
_SERVE = """
import sys
from secantus import SecantusDBServer
server = SecantusDBServer(host="127.0.0.1", port=0, storage_path=sys.argv[1], replica_set_name=None,
                          ttl_sweep_seconds=float(sys.argv[2]))
server.start()
print("SECANTUS_URI=" + server.uri, flush=True)
sys.stdin.read()
server.stop()
"""


@dataclass(frozen=True)
class Database:
    """A running database: its URI and process."""

    uri: str
    process: subprocess.Popen[str]


@contextlib.contextmanager
def secantus_database(
    storage: str | Path = ":memory:", *, ttl_sweep_seconds: float = 60.0
) -> Iterator[Database]:
    """Start SecantusDB; yield it; stop it (stdin closed, then terminate, then kill)."""
    log = work_dir() / "secantus.log"
    with log.open("a") as stderr:
        proc = subprocess.Popen([str(tools_python()), "-c", _SERVE, str(storage), str(ttl_sweep_seconds)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                start_new_session=True)
    watch(proc)
    try:
        uri = _read_uri(proc, log)
        yield Database(uri, proc)
    finally:
        with contextlib.suppress(OSError):
            proc.stdin.close()  # type: ignore[union-attr]
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _read_uri(proc: subprocess.Popen[str], log: Path) -> str:
    timer = threading.Timer(START_TIMEOUT, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("SECANTUS_URI="):
                return line.strip().split("=", 1)[1]
    finally:
        timer.cancel()
    raise RuntimeError(f"SecantusDB ended early (rc={proc.wait()}); its log:\n{log.read_text()[-3000:]}")
