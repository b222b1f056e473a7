"""``python -m exo_otel trace-id``: a run's trace id from the instrumentation alone (a real process)."""

from __future__ import annotations

import subprocess
import sys

from exo_otel import format_trace_id, run_id_for_trace

RUN_ID = "9d2c6f0e-3b1a-4c5d-8e7f-001122334455"


def _trace_id(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exo_otel", "trace-id", *argv], capture_output=True, text=True, timeout=60
    )


def test_prints_the_trace_id_a_backend_shows() -> None:
    done = _trace_id(f"  {RUN_ID}\n")  # pasted with blanks around it
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout == "8e2c6f0e3b1a4c5d9d7f001122334455\n" == format_trace_id(RUN_ID) + "\n"
    assert run_id_for_trace(done.stdout.strip()) == RUN_ID


def test_a_run_id_that_is_not_a_uuid_is_hashed_with_a_warning() -> None:
    done = _trace_id("run-42")
    assert done.returncode == 0
    assert done.stdout == format_trace_id("run-42") + "\n"
    assert "python -m exo_otel: warning: 'run-42' is not a UUID" in done.stderr


def test_an_empty_run_id_is_a_usage_error() -> None:
    done = _trace_id("   ")
    assert done.returncode == 2 and done.stdout == ""
    assert "trace-id: RUN_ID is empty" in done.stderr
