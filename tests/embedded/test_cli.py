"""The exo-otel command line: the state manager in a subprocess, and the demo."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from exo_otel_demo.cli import main
from helpers.sm_fixtures import free_port

SCRIPT = os.path.join(os.path.dirname(sys.executable), "exo-otel")


def _read_settings(process: subprocess.Popen[str], timeout: float = 20.0) -> dict[str, str]:
    """The two settings lines, then the ready line the state manager prints once it serves."""
    settings: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while len(settings) < 2:
        assert time.monotonic() < deadline, "the state manager printed no settings"
        line = process.stdout.readline()
        assert line, "the state manager exited early"
        name, _, value = line.strip().partition("=")
        settings[name] = value
    ready = process.stdout.readline()
    uri = settings["EXOSPHERE_STATE_MANAGER_URI"]
    assert ready == f"ready: the embedded state manager serves {uri}; Ctrl-C stops it\n"
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


SUBCOMMANDS = ("demo", "state-manager", "trace-id", "links")


def _help(*args: str, columns: int) -> str:
    """What ``exo-otel ARGS --help`` prints in a terminal ``columns`` wide (argparse reads COLUMNS)."""
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(io.StringIO()) as out:
        patch.setenv("COLUMNS", str(columns))
        with pytest.raises(SystemExit) as exit_info:
            main([*args, "--help"])
    assert exit_info.value.code == 0
    return out.getvalue()


@pytest.mark.parametrize("columns", [50, 80, 200])
def test_help_reads_as_plain_text_at_any_width(columns: int) -> None:
    top = _help(columns=columns)
    assert "exo-otel: OpenTelemetry for Exosphere." in " ".join(top.split())
    for name in SUBCOMMANDS:
        assert name in top
    texts = [top] + [_help(name, columns=columns) for name in SUBCOMMANDS]
    for text in texts:
        assert "``" not in text and "`" not in text  # no reStructuredText markup
    words = {word.strip("(),;.") for text in texts for word in text.split()}
    # Variable names and options are never cut in two, however narrow the terminal.
    for name in ("OTEL_EXPORTER_PROMETHEUS_HOST", "OTEL_EXPORTER_PROMETHEUS_PORT",
                 "OTEL_EXPORTER_OTLP_ENDPOINT", "EXO_OTEL_JAEGER_URL", "EXO_OTEL_GRAFANA_URL",
                 "--expose-run-context"):
        assert name in words, (name, columns)
    assert not any(word.startswith("OTEL_") and word.rstrip("_") != word for word in words)


def test_every_subcommand_has_a_description_line() -> None:
    for name in SUBCOMMANDS:
        text = _help(name, columns=100)
        usage, description = text.split("\n\n")[:2]
        assert usage.startswith(f"usage: exo-otel {name}")
        assert description[0].isupper() and len(description.split()) >= 5, (name, description)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert re.fullmatch(r"exo-otel 0\.1\.0 \(exospherehost [\d.]+, opentelemetry-sdk [\d.]+\)\n", out), out


SECONDS = "expected a number of seconds (0 or more),"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo", "--runs", "x"], "argument --runs: expected a whole number of 1 or more, got 'x'"),
        (["demo", "--runs", "0"], "argument --runs: expected a whole number of 1 or more, got '0'"),
        (["demo", "--hold", "soon"], f"argument --hold: {SECONDS} got 'soon'"),
        (["demo", "--timeout", "-1"], f"argument --timeout: {SECONDS} got '-1'"),
        (["state-manager", "--port", "x"], "argument --port: expected a port number (0 to 65535), got 'x'"),
    ],
)
def test_bad_options_get_readable_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.endswith(f"error: {message}\n"), err
    assert "_positive_int" not in err and "_seconds" not in err and "invalid" not in err
