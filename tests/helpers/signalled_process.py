"""Driving tests/helpers/signal_runtime.py in its own process: start it, signal it, check what it sent."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from exo_otel import format_trace_id
from helpers import HELPERS_DIR
from helpers.otlp_receiver import OtlpHttpReceiver
from helpers.proc_runtime import LAUNCHER, otel_env


def _env(endpoint: str, **extra: str) -> dict[str, str]:
    # Nothing leaves before the signal: what arrives is what the signal path flushed.
    return otel_env(endpoint, "signalled-runtime", EXOSPHERE_DISABLE_DEFAULT_LOGGING="1",
                    OTEL_METRICS_EXPORTER="otlp", OTEL_BSP_SCHEDULE_DELAY="60000",
                    OTEL_METRIC_EXPORT_INTERVAL="60000", **extra)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(
    endpoint: str, launcher: bool = True, server: tuple[str, str] | None = None, by_hand: bool = False,
    **extra: str,
) -> tuple[subprocess.Popen[str], dict[str, list[str]]]:
    """Start signal_runtime.py (under the launcher by default); its runs, once two states hang."""
    command = [sys.executable, str(HELPERS_DIR / "signal_runtime.py")]
    if server is not None:
        command += [f"--uri={server[0]}", f"--key={server[1]}"]
    if by_hand:
        command.append("--by-hand")
    if launcher:
        command = [str(LAUNCHER), *command]
    process = subprocess.Popen(
        command, env=_env(endpoint, **extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # A shell's background job starts with SIGINT ignored, and Python then installs no
        # KeyboardInterrupt handler: the runtime gets the disposition a foreground process has.
        preexec_fn=_default_sigint,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    for line in process.stdout:
        if line.startswith("READY "):
            return process, json.loads(line[len("READY "):])
        if time.monotonic() > deadline:
            break
    process.kill()
    raise AssertionError(f"no READY line: {process.communicate()[1]}")


def stop(process: subprocess.Popen[str], signum: int) -> tuple[int, float, str]:
    """Send ``signum``; the exit status, the seconds until the process was gone, and its stderr."""
    sent = time.monotonic()
    process.send_signal(signum)
    _out, err = process.communicate(timeout=60)
    return process.returncode, time.monotonic() - sent, err


def is_state_span(name: str) -> bool:
    return name.startswith(("node ", "execute "))


def check_sigterm_telemetry(receiver: OtlpHttpReceiver, runs: dict[str, list[str]]) -> int:
    """Every completed state's spans, the in-flight states' spans ended interrupted, inflight 0."""
    spans = receiver.spans()
    traces = {run_id: format_trace_id(run_id) for run_id in runs["completed"] + runs["in_flight"]}
    for run_id in runs["completed"]:
        names = sorted(s.name for s in spans if s.trace_id == traces[run_id] and is_state_span(s.name))
        assert names == ["execute RaiseNode", "node only"], (run_id, names)
    for run_id in runs["in_flight"]:
        state_spans = [s for s in spans if s.trace_id == traces[run_id] and is_state_span(s.name)]
        assert sorted(s.name for s in state_spans) == ["execute HangNode", "node only"], run_id
        for span in state_spans:
            assert span.attributes["exosphere.state.outcome"] == "interrupted"
            assert span.attributes["error.type"] == "SIGTERM"
            assert span.status_code == 2
    inflight = [p for p in receiver.metric_points() if p.name == "exosphere.runtime.inflight"]
    assert inflight and all(p.value == 0 for p in inflight), inflight
    return len(spans)
