"""The real state manager's app with its Python allocations traced: ``uvicorn helpers.memory_probe:app``.

Imported by uvicorn in the server's process instead of ``app.main`` (under ``opentelemetry-instrument``
the launcher's initialisation has run by then, so the side is loaded as usual). It starts
``tracemalloc`` before importing the app, and on each SIGUSR1 writes a snapshot to
``$EXO_OTEL_SNAPSHOT_DIR/<n>.tracemalloc`` (n = 1, 2, ...), then a line ``<n>`` to ``done`` there, so
the process that signalled knows when the file is whole. ``benchmarks/server_memory.py --trace-malloc``
signals it after every round and compares the snapshots.
"""

from __future__ import annotations

import itertools
import os
import signal
import tracemalloc
from pathlib import Path
from types import FrameType

SNAPSHOT_DIR = "EXO_OTEL_SNAPSHOT_DIR"
FRAMES = 8

tracemalloc.start(FRAMES)

from app.main import app  # noqa: E402  (the upstream app, from the server's working folder)

_numbers = itertools.count(1)


def _snapshot(signum: int, frame: FrameType | None) -> None:
    folder = Path(os.environ[SNAPSHOT_DIR])
    number = next(_numbers)
    tracemalloc.take_snapshot().dump(str(folder / f"{number}.tracemalloc"))
    with (folder / "done").open("a") as done:
        done.write(f"{number}\n")


signal.signal(signal.SIGUSR1, _snapshot)

__all__ = ["app"]
