"""SIGTERM and SIGINT on a runtime under the launcher: spans flushed, in-flight states ended, same exit."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exo_otel import format_trace_id
from helpers import HELPERS_DIR, TESTS_DIR
from helpers.otel_fixtures import instrumented
from helpers.otlp_receiver import OtlpHttpReceiver
from helpers.signal_runtime import COMPLETED

LAUNCHER = Path(sys.executable).with_name("opentelemetry-instrument")


def _env(endpoint: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        PYTHONPATH=os.pathsep.join(p for p in (str(TESTS_DIR), os.environ.get("PYTHONPATH", "")) if p),
        EXOSPHERE_DISABLE_DEFAULT_LOGGING="1",
        OTEL_SERVICE_NAME="signalled-runtime",
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_METRICS_EXPORTER="otlp",
        OTEL_LOGS_EXPORTER="none",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        # Nothing leaves before the signal: what arrives is what the signal path flushed.
        OTEL_BSP_SCHEDULE_DELAY="60000",
        OTEL_METRIC_EXPORT_INTERVAL="60000",
    )
    env.update(extra)
    return env


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


@contextlib.contextmanager
def unanswering_collector() -> Iterator[str]:
    """A port that accepts connections and never answers: a collector that is down the worst way."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


def is_state_span(name: str) -> bool:
    return name.startswith(("node ", "execute "))


def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


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


def test_sigterm_flushes_completed_and_in_flight_spans_and_exits_as_without_exo_otel() -> None:
    with OtlpHttpReceiver() as receiver:
        process, runs = start(receiver.endpoint)
        status, seconds, err = stop(process, signal.SIGTERM)
        print(f"\nSIGTERM under the launcher: exit status {status}, gone after {seconds:.2f} s")
        assert status == -signal.SIGTERM, err
        count = check_sigterm_telemetry(receiver, runs)
    print(f"{COMPLETED} completed and 2 in-flight states: {count} spans arrived")


def test_sigterm_with_opentelemetry_set_up_by_hand() -> None:
    with OtlpHttpReceiver() as receiver:
        process, runs = start(receiver.endpoint, launcher=False, by_hand=True)
        status, seconds, err = stop(process, signal.SIGTERM)
        print(f"\nSIGTERM, set up by hand: exit status {status}, gone after {seconds:.2f} s")
        assert status == -signal.SIGTERM, err
        check_sigterm_telemetry(receiver, runs)


def test_sigterm_without_instrumentation_exits_the_same_way() -> None:
    with OtlpHttpReceiver() as receiver:
        process, _runs = start(receiver.endpoint, launcher=False)
        status, _seconds, err = stop(process, signal.SIGTERM)
    assert status == -signal.SIGTERM, err


@pytest.mark.parametrize("launcher", [True, False], ids=["launcher", "plain"])
def test_sigint_exits_the_same_way_with_or_without_exo_otel(launcher: bool) -> None:
    with OtlpHttpReceiver() as receiver:
        process, runs = start(receiver.endpoint, launcher=launcher)
        status, seconds, err = stop(process, signal.SIGINT)
        print(f"\nSIGINT ({'launcher' if launcher else 'plain'}): exit status {status} after {seconds:.2f} s")
        assert status == -signal.SIGINT, err
        assert "KeyboardInterrupt" in err
        if launcher:
            receiver.wait_for(lambda rx: len(rx.spans()) >= 2 * (COMPLETED + 2))
            spans = receiver.spans()
            for run_id in runs["in_flight"]:
                trace_id = format_trace_id(run_id)
                state_spans = [s for s in spans if s.trace_id == trace_id and is_state_span(s.name)]
                assert len(state_spans) == 2
                assert {s.attributes["exosphere.state.outcome"] for s in state_spans} == {"interrupted"}


@pytest.mark.parametrize("collector", ["refusing", "unanswering"])
def test_with_the_collector_down_sigterm_ends_the_process_within_the_bound(collector: str) -> None:
    with contextlib.ExitStack() as stack:
        endpoint = closed_port() if collector == "refusing" else stack.enter_context(unanswering_collector())
        timings = {}
        for disabled in ("exospherehost", ""):
            process, _runs = start(endpoint, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=disabled)
            status, seconds, err = stop(process, signal.SIGTERM)
            assert status == -signal.SIGTERM, err
            timings["without exo_otel" if disabled else "with exo_otel"] = seconds
    measured = ", ".join(f"{k} {v:.2f} s" for k, v in timings.items())
    print(f"\ncollector {collector}: SIGTERM to exit {measured}")
    from exo_otel.sdk.shutdown import FLUSH_BOUND_S

    # The stated bound: FLUSH_BOUND_S in exo_otel, plus the interpreter's own exit.
    assert timings["with exo_otel"] < FLUSH_BOUND_S + 2.0


def test_handlers_go_only_where_the_default_would_kill_and_uninstrument_restores_them() -> None:

    def own_handler(signum: int, frame: object) -> None:
        pass

    previous = signal.signal(signal.SIGINT, own_handler)
    try:
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        with instrumented():
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # exo_otel's
            assert signal.getsignal(signal.SIGINT) is own_handler  # the application's: left alone
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) is own_handler
    finally:
        signal.signal(signal.SIGINT, previous)
