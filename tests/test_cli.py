"""The exo-otel command line: the state manager in a subprocess, and the demo."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from exo_otel.demo.cli import main
from sm_fixtures import free_port

SCRIPT = os.path.join(os.path.dirname(sys.executable), "exo-otel")


def _read_settings(process: subprocess.Popen[str], timeout: float = 20.0) -> dict[str, str]:
    settings: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while len(settings) < 2:
        assert time.monotonic() < deadline, "the state manager printed no settings"
        line = process.stdout.readline()
        assert line, "the state manager exited early"
        name, _, value = line.strip().partition("=")
        settings[name] = value
    return settings


def test_state_manager_serves_then_exits_cleanly_on_sigint() -> None:
    port = free_port()
    process = subprocess.Popen(
        [SCRIPT, "state-manager", "--port", str(port), "--api-key", "cli-key"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        settings = _read_settings(process)
        assert settings == {
            "EXOSPHERE_STATE_MANAGER_URI": f"http://127.0.0.1:{port}", "EXOSPHERE_API_KEY": "cli-key"
        }
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v0/namespace/ns/runs/1/10", headers={"x-api-key": "cli-key"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
            # Compact JSON, as upstream (Starlette) writes it.
            assert response.read() == b'{"namespace":"ns","total":0,"page":1,"size":10,"runs":[]}'
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 0
        assert process.stderr is not None and "Traceback" not in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_state_manager_exits_cleanly_on_sigterm() -> None:
    process = subprocess.Popen([SCRIPT, "state-manager"], stdout=subprocess.PIPE, text=True)
    try:
        settings = _read_settings(process)
        assert settings["EXOSPHERE_STATE_MANAGER_URI"].startswith("http://127.0.0.1:")
        assert len(settings["EXOSPHERE_API_KEY"]) >= 20  # a random key when none is given
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_demo_runs_a_graph_to_success(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "run id: " in out and "run status: SUCCESS" in out
