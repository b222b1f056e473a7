"""Where the upstream state manager's source comes from, extracted once into the harness's work folder.

In order: ``UPSTREAM_SRC`` (an extracted ``state-manager`` folder, used in place), ``UPSTREAM_GIT_DIR``
(a git directory of exospherehost/exospherehost, ``UPSTREAM_REV`` taken with ``git archive``, by default
the tag 0.0.3 that matches the ``exospherehost`` 0.0.3 SDK), ``UPSTREAM_ARCHIVE`` (a ``.tar.gz`` holding a
``state-manager/`` folder), and last the CI snapshot ``shared/upstream-src/*.tar.gz`` beside the checkout.

The python-sdk's own tests (``python_sdk_tests``): from ``UPSTREAM_GIT_DIR`` at the same revision, else
from the sdist of ``exospherehost`` 0.0.3 on PyPI (it ships ``tests/``), fetched once with pip.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
DEFAULT_REV = "0.0.3"
SNAPSHOT_NAME = "exospherehost-0.0.3-state-manager.tar.gz"
SDK_REQUIREMENT = "exospherehost==0.0.3"


def work_dir() -> Path:
    """The harness's cache: sources and virtual environments (``EXO_OTEL_HARNESS_DIR`` overrides)."""
    folder = os.environ.get("EXO_OTEL_HARNESS_DIR")
    path = Path(folder) if folder else Path(os.environ.get("TMPDIR", "/tmp")) / "exo-otel-upstream"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """An exclusive lock across processes (tests start servers in parallel; each builds only once)."""
    with (work_dir() / f"{name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def snapshot_archive() -> Path | None:
    """The source archive CI provides: ``UPSTREAM_ARCHIVE``, else ``shared/upstream-src/`` beside us."""
    if os.environ.get("UPSTREAM_ARCHIVE"):
        return Path(os.environ["UPSTREAM_ARCHIVE"])
    for folder in REPO.parents:
        candidate = folder / "shared" / "upstream-src" / SNAPSHOT_NAME
        if candidate.is_file():
            return candidate
    return None


def source_unavailable() -> str | None:
    """Why the upstream source cannot be had here, or None when it can."""
    if os.environ.get("UPSTREAM_SRC"):
        folder = Path(os.environ["UPSTREAM_SRC"])
        return None if (folder / "app" / "main.py").is_file() else f"UPSTREAM_SRC={folder} has no app/main.py"
    if os.environ.get("UPSTREAM_GIT_DIR"):
        return None
    archive = snapshot_archive()
    if archive is None:
        return ("the upstream state manager source is not available: set UPSTREAM_GIT_DIR (a git directory "
                "of exospherehost/exospherehost), UPSTREAM_SRC (an extracted state-manager folder) or "
                "UPSTREAM_ARCHIVE (a source archive); see the README, section 'The real state manager'")
    return None if archive.is_file() else f"UPSTREAM_ARCHIVE={archive} is not a file"


def state_manager_source() -> Path:
    """The ``state-manager`` folder of the upstream source (app/main.py, run.py, uv.lock).

    Raises:
        RuntimeError: no source is available (the message says what to set).
    """
    reason = source_unavailable()
    if reason is not None:
        raise RuntimeError(reason)
    if os.environ.get("UPSTREAM_SRC"):
        return Path(os.environ["UPSTREAM_SRC"]).resolve()
    if os.environ.get("UPSTREAM_GIT_DIR"):
        git_dir = os.environ["UPSTREAM_GIT_DIR"]
        rev = os.environ.get("UPSTREAM_REV", DEFAULT_REV)
        commit = _git(git_dir, "rev-parse", f"{rev}^{{commit}}").decode().strip()
        return _extracted(f"git-{commit[:12]}", lambda: _git(git_dir, "archive", "--format=tar", commit,
                                                               "state-manager", "LICENSE.md"))
    archive = snapshot_archive()
    assert archive is not None
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()[:12]
    return _extracted(f"archive-{digest}", archive.read_bytes)


def _git(git_dir: str, *args: str) -> bytes:
    done = subprocess.run(["git", "--git-dir", git_dir, *args], capture_output=True)
    if done.returncode != 0:
        reason = done.stderr.decode().strip()
        raise RuntimeError(
            f"UPSTREAM_GIT_DIR={git_dir}: git {' '.join(args)} failed ({reason}); it must "
            "be a git directory of exospherehost/exospherehost with the tag (UPSTREAM_REV, default "
            f"{DEFAULT_REV})"
        )
    return done.stdout


def _extracted(key: str, read_tar: object, find: object = None) -> Path:
    """Extract a tar (plain or gzip) once into ``src/<key>``; return its ``state-manager`` folder (or what
    ``find(root)`` finds in it)."""
    finder = find or _find_state_manager
    target = work_dir() / "src" / key
    with locked("source"):
        found = finder(target)  # type: ignore[operator]
        if found is not None:
            return found
        partial = target.with_name(key + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        data = read_tar()  # type: ignore[operator]
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            tar.extractall(partial, filter="data")
        partial.rename(target)
    found = finder(target)  # type: ignore[operator]
    if found is None:
        looked_for = "state-manager/app/main.py" if find is None else "python-sdk tests"
        raise RuntimeError(f"no {looked_for} in the upstream source ({target})")
    return found


def _find_state_manager(root: Path) -> Path | None:
    if not root.is_dir():
        return None
    for main in sorted(root.glob("**/state-manager/app/main.py")):
        return main.parent.parent
    return None


def python_sdk_tests() -> tuple[Path | None, str]:
    """A folder holding the python-sdk's ``tests/`` and ``pyproject.toml`` (its pytest settings), and where
    it came from; ``(None, why)`` when neither ``UPSTREAM_GIT_DIR`` nor PyPI's sdist can be had."""
    git_dir = os.environ.get("UPSTREAM_GIT_DIR")
    if git_dir:
        rev = os.environ.get("UPSTREAM_REV", DEFAULT_REV)
        commit = _git(git_dir, "rev-parse", f"{rev}^{{commit}}").decode().strip()
        folder = _extracted(f"git-sdk-tests-{commit[:12]}", lambda: _git(
            git_dir, "archive", "--format=tar", commit, "python-sdk/tests", "python-sdk/pyproject.toml"),
            _find_sdk_tests)
        return folder, f"UPSTREAM_GIT_DIR at {rev} ({commit[:12]})"
    sdist_dir = work_dir() / "sdist"
    with locked("sdist"):
        found = sorted(sdist_dir.glob("exospherehost-*.tar.gz"))
        if not found:
            result = subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                 "--no-binary", ":all:", "-d", str(sdist_dir), SDK_REQUIREMENT],
                capture_output=True, text=True)
            found = sorted(sdist_dir.glob("exospherehost-*.tar.gz"))
            if result.returncode != 0 or not found:
                return None, (f"no python-sdk tests: UPSTREAM_GIT_DIR is not set and `pip download "
                              f"{SDK_REQUIREMENT}` (sdist) failed: {result.stderr.strip()[-400:]}")
    archive = found[0]
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()[:12]
    folder = _extracted(f"sdist-{digest}", archive.read_bytes, _find_sdk_tests)
    return folder, f"the PyPI sdist {archive.name}"


def _find_sdk_tests(root: Path) -> Path | None:
    if not root.is_dir():
        return None
    for project in sorted(root.glob("**/pyproject.toml")):
        if (project.parent / "tests" / "test_runtime_comprehensive.py").is_file():
            return project.parent
    return None
