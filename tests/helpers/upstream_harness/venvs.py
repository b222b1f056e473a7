"""The virtual environments the harness builds (cached in its work folder, rebuilt when an input changes).

- the server's: upstream's locked runtime dependencies, exactly (``uv export --frozen --no-dev`` of its
  ``uv.lock``), the in-process database's one dependency, and the caller's extra packages installed
  with the lock as constraints, so that nothing the caller adds moves a pinned version;
- the tools': ``uv`` (to export the lock) and SecantusDB (the wire-protocol database, a test tool
  only, GPL-2.0: never a dependency of exo-otel).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .source import REPO, locked, state_manager_source, work_dir

# The in-process database's engine (tests/helpers/upstream_harness/memory_db.py).
MEMORY_DB_PINS = ("mongomock==4.3.0",)
TOOL_PINS = ("uv==0.13.9", "secantusdb==0.7.0b3")
# The server venv's extras where exo_otel's state manager side is loaded: this checkout and the distro
# that `opentelemetry-instrument` configures from OTEL_*.
SIDE_PIP = f"-e {REPO} opentelemetry-distro==0.66b2"
LAYOUT_VERSION = "1"  # bump when what a venv holds changes in a way its inputs do not show


def base_python() -> str:
    """A Python >= 3.12 to build venvs with (upstream pins 3.12): this one if it qualifies."""
    override = os.environ.get("EXO_OTEL_HARNESS_PYTHON")
    if override:
        return override
    return sys.executable  # the project needs >= 3.12, as upstream does


def _python_of(venv: Path) -> Path:
    return venv / "bin" / "python"


def _pip(python: Path, *args: str, log: Path) -> None:
    with log.open("a") as out:
        out.write(f"$ pip install {' '.join(args)}\n")
        out.flush()
        result = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                                 *args], stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise RuntimeError(f"pip install failed; see {log}:\n" + log.read_text()[-3000:])


def _built(name: str, stamp_text: str, build: object) -> Path:
    """The venv ``<name>-<hash of its inputs>``, built by ``build(python, log)`` under a lock once."""
    digest = hashlib.sha256(f"{LAYOUT_VERSION}\n{base_python()}\n{stamp_text}".encode()).hexdigest()[:12]
    venv = work_dir() / f"{name}-{digest}"
    done = venv / ".built"
    if done.is_file():
        return _python_of(venv)
    with locked(name):
        if done.is_file():
            return _python_of(venv)
        shutil.rmtree(venv, ignore_errors=True)
        log = venv.with_suffix(".log")
        log.write_text("")
        subprocess.run([base_python(), "-m", "venv", str(venv)], check=True)
        build(_python_of(venv), log)  # type: ignore[operator]
        done.write_text(stamp_text)
    return _python_of(venv)


def tools_python() -> Path:
    """The tools venv's Python (``uv``, ``secantus``)."""
    return _built("tools", "\n".join(TOOL_PINS), lambda python, log: _pip(python, *TOOL_PINS, log=log))


def locked_requirements(source: Path) -> str:
    """Upstream's runtime dependencies as pinned requirements, from its lock file."""
    uv = tools_python().parent / "uv"
    return subprocess.run(
        [str(uv), "export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-project", "--quiet"],
        cwd=source, capture_output=True, text=True, check=True,
    ).stdout


def server_python(extra: Sequence[str] = ()) -> Path:
    """The server venv's Python: upstream's lock, the in-process database, then ``extra`` (pip arguments).

    Args:
        extra: more ``pip install`` arguments, e.g. ``("-e", "/path/to/exo_otel", "opentelemetry-distro")``.
            Write paths absolute: the venv is keyed on the text. An editable install picks up changes.
    """
    source = state_manager_source()
    requirements = locked_requirements(source)
    stamp = "\n".join([requirements, *MEMORY_DB_PINS, "--extra", *extra])

    def build(python: Path, log: Path) -> None:
        pins = python.parent.parent / "upstream-lock.txt"
        pins.write_text(requirements)
        _pip(python, "-r", str(pins), *MEMORY_DB_PINS, log=log)
        if extra:
            _pip(python, "-c", str(pins), *extra, log=log)

    return _built("server", stamp, build)
