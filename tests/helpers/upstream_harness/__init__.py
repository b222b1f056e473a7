"""The project's harness for the real, unmodified upstream Exosphere state manager (tests and contributors).

It takes the upstream source (`source`), builds the server's venv from upstream's lock (`venvs`) and
starts the app bounded in time on 127.0.0.1 (`processes`): on the in-process database (`memory_db`,
served by `serve.py`) or on SecantusDB, a wire-protocol database in its own process (`database`), as
one or several real uvicorn process trees. From a shell: ``python -m helpers.upstream_harness --help`` (with
``tests/`` on ``PYTHONPATH``). Imports the standard library only: `memory_db` and `serve.py` run in
the server's venv.
"""

from __future__ import annotations

from .database import Database, secantus_database
from .processes import Settings, UpstreamServer, in_process_server, start_uvicorn, stop, uvicorn_server
from .source import source_unavailable, state_manager_source
from .venvs import server_python

__all__ = [
    "Database",
    "Settings",
    "UpstreamServer",
    "in_process_server",
    "secantus_database",
    "server_python",
    "source_unavailable",
    "start_uvicorn",
    "state_manager_source",
    "stop",
    "uvicorn_server",
]
