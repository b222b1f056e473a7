"""`exo-otel trace-id` and `exo-otel links`, and the functions in exo_otel_demo.links behind them."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse

import pytest

from exo_otel import format_trace_id, run_id_for_trace
from exo_otel_demo.cli import main
from exo_otel_demo.links import (
    DEFAULT_GRAFANA_URL,
    DEFAULT_JAEGER_URL,
    EXO_OTEL_GRAFANA_URL,
    EXO_OTEL_JAEGER_URL,
    grafana_dashboard_url,
    grafana_explore_url,
    jaeger_url,
    run_links,
)

RUN_ID = "3f2b8c1e-9d4a-4e6b-8a7c-1d2e3f4a5b6c"


@pytest.fixture(autouse=True)
def _no_base_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EXO_OTEL_JAEGER_URL, raising=False)
    monkeypatch.delenv(EXO_OTEL_GRAFANA_URL, raising=False)


def _explore_target(url: str) -> tuple[str, dict[str, object], dict[str, object]]:
    parsed = urllib.parse.urlsplit(url)
    (pane,) = json.loads(urllib.parse.parse_qs(parsed.query)["panes"][0]).values()
    (target,) = pane["queries"]
    return f"{parsed.scheme}://{parsed.netloc}{parsed.path}", pane, target


def test_trace_id_prints_the_32_hex_trace_id(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace-id", RUN_ID]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == format_trace_id(RUN_ID)
    assert len(printed) == 32 and int(printed, 16) > 0
    assert run_id_for_trace(printed) == RUN_ID


def test_trace_id_ignores_blanks_around_a_pasted_run_id(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace-id", f"  {RUN_ID}\n"]) == 0
    assert capsys.readouterr().out.strip() == format_trace_id(RUN_ID)


def test_links_default_to_the_local_stack(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["links", RUN_ID]) == 0
    lines = capsys.readouterr().out.splitlines()
    trace_id = format_trace_id(RUN_ID)
    assert lines[0] == f"jaeger:  {DEFAULT_JAEGER_URL}/trace/{trace_id}"
    assert lines[1] == f"grafana: {DEFAULT_GRAFANA_URL}/d/exosphere-runs?var-run_id={RUN_ID}"
    assert lines[2].startswith("explore: ")
    page, pane, target = _explore_target(lines[2].removeprefix("explore: "))
    assert page == f"{DEFAULT_GRAFANA_URL}/explore"
    assert pane["datasource"] == "tempo"
    assert target == {"refId": "A", "queryType": "traceql", "query": trace_id}


def test_links_read_base_urls_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(EXO_OTEL_JAEGER_URL, "https://jaeger.internal/")
    monkeypatch.setenv(EXO_OTEL_GRAFANA_URL, "https://grafana.internal/sub/")
    assert main(["links", RUN_ID]) == 0
    out = capsys.readouterr().out
    assert f"jaeger:  https://jaeger.internal/trace/{format_trace_id(RUN_ID)}\n" in out
    assert f"grafana: https://grafana.internal/sub/d/exosphere-runs?var-run_id={RUN_ID}\n" in out
    assert "explore: https://grafana.internal/sub/explore?" in out


def test_explicit_bases_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EXO_OTEL_JAEGER_URL, "https://ignored")
    assert jaeger_url(RUN_ID, "http://j:1") == f"http://j:1/trace/{format_trace_id(RUN_ID)}"
    page, _pane, _target = _explore_target(grafana_explore_url(RUN_ID, "http://g:2"))
    assert page == "http://g:2/explore"


@pytest.mark.parametrize("command", ["trace-id", "links"])
def test_a_run_id_that_is_not_a_uuid_still_has_a_trace_with_a_warning(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "run-42"]) == 0
    captured = capsys.readouterr()
    assert format_trace_id("run-42") in captured.out
    assert captured.err == (
        "exo-otel: warning: 'run-42' is not a UUID, as Exosphere run ids are (a typo?); "
        "its trace id is a hash of the text\n"
    )
    assert run_links("run-42").trace_id == format_trace_id("run-42")


@pytest.mark.parametrize(
    "typo", [RUN_ID[:-1], RUN_ID + "7", RUN_ID.replace("-", "", 1), RUN_ID.replace("a", "g", 1)]
)
def test_a_mistyped_run_id_gets_the_warning(typo: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace-id", typo]) == 0
    assert "is not a UUID" in capsys.readouterr().err


def test_a_uuid_run_id_in_any_case_gets_no_warning(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trace-id", RUN_ID.upper()]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == format_trace_id(RUN_ID) and captured.err == ""


@pytest.mark.parametrize("command", ["trace-id", "links"])
@pytest.mark.parametrize("run_id", ["", "   "])
def test_an_empty_run_id_is_a_usage_error(
    command: str, run_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, run_id])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "RUN_ID is empty" in captured.err


@pytest.mark.parametrize("command", ["trace-id", "links"])
def test_a_missing_run_id_is_a_usage_error(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command])
    assert exit_info.value.code == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["", "  ", None])
def test_the_functions_reject_an_empty_run_id(bad: str) -> None:
    with pytest.raises(ValueError, match="run id"):
        run_links(bad)
    with pytest.raises(ValueError, match="run id"):
        grafana_dashboard_url(bad)


def test_the_grafana_link_is_short() -> None:
    # One terminal line: the dashboard link is what the demo prints; Explore's pane state is minimal.
    assert len(run_links(RUN_ID).grafana) < 100
    assert len(run_links(RUN_ID).explore) < 240
    escaped = grafana_dashboard_url("run 42/x")
    assert escaped == f"{DEFAULT_GRAFANA_URL}/d/exosphere-runs?var-run_id=run%2042%2Fx"


def test_the_console_script_exits_2_on_an_empty_run_id() -> None:
    result = subprocess.run([sys.executable, "-m", "exo_otel_demo.cli", "links", ""], capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "RUN_ID is empty" in result.stderr
    result = subprocess.run([sys.executable, "-m", "exo_otel_demo.cli", "trace-id", RUN_ID],
                            capture_output=True,
                            text=True, timeout=30, check=False)
    assert (result.returncode, result.stdout.strip()) == (0, format_trace_id(RUN_ID))
