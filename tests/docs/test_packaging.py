"""The wheels the README tells users to build: they build offline, install, and have publishable metadata."""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import zipfile
from email.message import Message
from pathlib import Path

import pytest

import exo_otel
from exo_otel.sdk.package import _instruments

ROOT = Path(__file__).parents[2]


def _build(tmp_path_factory: pytest.TempPathFactory, project: Path) -> Path:
    """``python -m build --wheel`` of a copy of ``project`` (nothing is written into the worktree)."""
    source = tmp_path_factory.mktemp("checkout")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(project / name, source / name)
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(project / "src", source / "src", ignore=skip)
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: the build backend from the test environment, so no network is needed.
    done = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(source)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [built] = out.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The instrumentation's wheel, ``exo-otel``."""
    return _build(tmp_path_factory, ROOT)


@pytest.fixture(scope="module")
def demo_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's wheel, ``exo-otel-demo`` (``demo/``)."""
    return _build(tmp_path_factory, ROOT / "demo")


def _metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as archive:
        return email.message_from_bytes(archive.read(f"exo_otel-{exo_otel.__version__}.dist-info/METADATA"))


def test_the_wheel_has_the_name_the_readme_gives(wheel: Path) -> None:
    assert wheel.name == f"exo_otel-{exo_otel.__version__}-py3-none-any.whl"
    assert wheel.name in (ROOT / "README.md").read_text()


def test_the_metadata_is_publishable(wheel: Path) -> None:
    metadata = _metadata(wheel)
    assert metadata["Name"] == "exo-otel"
    assert metadata["Version"] == exo_otel.__version__
    assert metadata["Requires-Python"] == ">=3.12"
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata["Summary"] and len(metadata["Summary"]) < 200
    assert metadata["Description-Content-Type"] == "text/markdown"
    description = metadata.get_payload(decode=True)
    assert isinstance(description, bytes)
    assert description.decode().strip() == (ROOT / "README.md").read_text().strip()
    assert "Framework :: OpenTelemetry :: Instrumentations" in metadata.get_all("Classifier")
    # The launcher loads the entry points where either side's library is (`instruments-any`).
    instruments = [r for r in metadata.get_all("Requires-Dist") if 'extra == "instruments-any"' in r]
    assert [r.split(";")[0].replace(" ", "") for r in instruments] == [
        *(spec.replace(" ", "").replace(">=0.0.3,<0.0.4", "<0.0.4,>=0.0.3") for spec in _instruments),
        "beanie>=2.0",
    ]


def test_the_wheel_carries_the_instrumentation_only_and_its_entry_points(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = archive.read(f"exo_otel-{exo_otel.__version__}.dist-info/entry_points.txt").decode()
    expected = {"exo_otel/__init__.py", "exo_otel/py.typed", "exo_otel/core/ids.py",
                "exo_otel/sdk/runtime.py", "exo_otel/server/sweeper.py"}
    assert expected <= names
    packages = {name.split("/")[1] for name in names if name.startswith("exo_otel/") and name.count("/") > 1}
    assert packages == {"core", "sdk", "server"}
    assert not any(name.startswith(("tests/", "exo_otel_demo/")) for name in names)
    assert "console_scripts" not in entry_points
    assert "exospherehost = exo_otel.sdk.instrumentor:ExosphereInstrumentor" in entry_points
    assert "exosphere_state_manager = exo_otel.server.instrumentor:StateManagerInstrumentor" in entry_points
    assert "exosphere = exo_otel.core.ids:RunIdGenerator" in entry_points


def test_the_demo_wheel_carries_the_embedded_state_manager_and_the_command(demo_wheel: Path) -> None:
    assert demo_wheel.name == f"exo_otel_demo-{exo_otel.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(demo_wheel) as archive:
        names = set(archive.namelist())
        info = f"exo_otel_demo-{exo_otel.__version__}.dist-info"
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
        metadata = email.message_from_bytes(archive.read(f"{info}/METADATA"))
    assert {"exo_otel_demo/cli.py", "exo_otel_demo/embedded/server.py", "exo_otel_demo/py.typed"} <= names
    assert not any(name.startswith("exo_otel/") for name in names)
    assert "exo-otel = exo_otel_demo.cli:main" in entry_points
    requires = [r.replace(" ", "") for r in metadata.get_all("Requires-Dist")]
    assert f"exo-otel=={exo_otel.__version__}" in requires


def test_the_installed_wheel_imports(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target),
         str(wheel)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    probe = subprocess.run(
        [sys.executable, "-c", "import exo_otel; print(exo_otel.__file__, exo_otel.format_trace_id('r'))"],
        capture_output=True, text=True, timeout=60, check=False, env={"PYTHONPATH": str(target)},
    )
    assert probe.returncode == 0, probe.stderr
    location, trace_id = probe.stdout.split()
    assert Path(location).is_relative_to(target)
    assert trace_id == exo_otel.format_trace_id("r")
