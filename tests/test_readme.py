"""The README's and the package docstring's Python examples run as written."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import exo_otel

README = Path(__file__).parent.parent / "README.md"


def _run(source: str) -> None:
    # A fresh interpreter: the examples set global providers, as a user's program would.
    done = subprocess.run(
        [sys.executable, "-c", source], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


def test_readme_python_examples_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    for block in blocks:
        _run(block)


def test_package_usage_runs() -> None:
    doc = exo_otel.__doc__ or ""
    usage = doc.split("Usage::", 1)[1].split("\n\n", 1)[1].split("\nUnder the", 1)[0]
    _run(textwrap.dedent(usage))


def test_readme_names_the_commands_ci_and_make_run() -> None:
    text = README.read_text()
    assert "make test" in text and "make demo" in text
    assert "make test" in (README.parent / ".ci" / "run").read_text()
