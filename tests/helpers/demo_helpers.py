"""Running `exo-otel demo` as a user does (the console script, in a subprocess) and reading its output."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

DEMO_TIMEOUT_S = 45.0

_TRIGGERED = re.compile(r"^\[(\d+)/(\d+)\] triggered run (\S+)")
_FIELD = re.compile(r"^  (run id|trace id|run status|jaeger|grafana):\s+(\S+)$")
_WATERFALL_ROW = re.compile(r"^( *)(\S.*?)\s+\|.*\|\s+[\d.]+ ms(.*)$")


@dataclass
class ReportedRun:
    """One run as the demo printed it."""

    fields: dict[str, str] = field(default_factory=dict)
    rows: list[tuple[int, str, str]] = field(default_factory=list)  # (indent, span name, error mark)


def parse_report(stdout: str) -> list[ReportedRun]:
    """The per-run sections printed after the runs finished."""
    runs: list[ReportedRun] = []
    for line in stdout.splitlines():
        if re.fullmatch(r"run \d+", line):
            runs.append(ReportedRun())
        elif runs and (m := _FIELD.match(line)):
            runs[-1].fields[m.group(1)] = m.group(2)
        elif runs and (m := _WATERFALL_ROW.match(line)):
            runs[-1].rows.append((len(m.group(1)), m.group(2), m.group(3).strip()))
    return runs


def demo_command() -> list[str]:
    """The installed console script next to this interpreter, as `make demo` runs it."""
    script = Path(sys.executable).parent / "exo-otel"
    return [str(script)] if script.exists() else [sys.executable, "-m", "exo_otel_demo.cli"]


def demo_env(**extra: str) -> dict[str, str]:
    """The environment without any OTEL_*/EXO_OTEL_* setting of the caller, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "EXO_OTEL_"))}
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(extra)
    return env


def run_demo(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
             timeout: float = DEMO_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """`exo-otel demo *args` to completion; its exit status and captured output."""
    return subprocess.run(
        [*demo_command(), "demo", *args], capture_output=True, text=True, encoding="utf-8",
        env=env if env is not None else demo_env(), cwd=cwd, timeout=timeout, check=False,
    )


def triggered_run_ids(stdout: str) -> list[str]:
    """The run ids of the demo's "[i/n] triggered run <id>" lines, in order."""
    return [m.group(3) for line in stdout.splitlines() if (m := _TRIGGERED.match(line))]
