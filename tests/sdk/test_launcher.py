"""The `opentelemetry-instrument` launcher loads exo_otel by itself, as a user runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from exo_otel import format_trace_id, run_span_id
from helpers import HELPERS_DIR, TESTS_DIR
from helpers.otlp_receiver import OtlpHttpReceiver

LAUNCHER = Path(sys.executable).with_name("opentelemetry-instrument")


def launch(*env_pairs: tuple[str, str], traces_exporter: str = "console") -> tuple[str, str]:
    done = launch_process(*env_pairs, traces_exporter=traces_exporter)
    assert done.returncode == 0, done.stderr
    [run_id] = re.findall(r"RUN_ID=(\S+)", done.stdout)
    return run_id, done.stdout


def launch_process(
    *env_pairs: tuple[str, str], traces_exporter: str = "console"
) -> subprocess.CompletedProcess[str]:
    """launcher_script.py under ``opentelemetry-instrument``, with only these OTEL_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = str(TESTS_DIR)
    env["EXOSPHERE_DISABLE_DEFAULT_LOGGING"] = "1"
    env["OTEL_METRICS_EXPORTER"] = "none"
    env["OTEL_LOGS_EXPORTER"] = "none"
    env.update(env_pairs)
    return subprocess.run(
        [
            str(LAUNCHER),
            "--traces_exporter",
            traces_exporter,
            sys.executable,
            str(HELPERS_DIR / "launcher_script.py"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def trigger_span_text(stdout: str) -> str | None:
    for block in re.split(r"\n(?=\{)", stdout):
        if '"name": "trigger launched"' in block:
            return block
    return None


def test_the_launcher_traces_the_trigger_with_the_run_trace_id() -> None:
    run_id, stdout = launch()
    span = trigger_span_text(stdout)
    assert span is not None, stdout
    assert f'"trace_id": "0x{format_trace_id(run_id)}"' in span
    assert f'"span_id": "0x{run_span_id(run_id):016x}"' in span
    assert '"kind": "SpanKind.PRODUCER"' in span
    # The runtime in the same process put the node in the run's trace too.
    assert stdout.count(f'"trace_id": "0x{format_trace_id(run_id)}"') >= 3


def test_the_launcher_with_the_exosphere_id_generator() -> None:
    run_id, stdout = launch(("OTEL_PYTHON_ID_GENERATOR", "exosphere"))
    span = trigger_span_text(stdout)
    assert span is not None, stdout
    assert f'"trace_id": "0x{format_trace_id(run_id)}"' in span


def test_disabled_instrumentation_gives_no_exosphere_span() -> None:
    _run_id, stdout = launch(("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "exospherehost"))
    assert trigger_span_text(stdout) is None
    assert '"exosphere.' not in stdout


def test_node_logs_reach_the_logs_pipeline_with_trace_and_run() -> None:
    with OtlpHttpReceiver() as receiver:
        run_id, _stdout = launch(
            ("OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED", "true"),
            ("OTEL_LOGS_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint),
            traces_exporter="otlp",
        )
        records = receiver.wait_for(lambda rx: [r for r in rx.logs() if r.body == "echoing hello"])
        spans = receiver.wait_for(lambda rx: [s for s in rx.spans() if s.name == "execute EchoNode"])
    [record] = records
    [execute] = spans
    assert record.trace_id == format_trace_id(run_id)
    assert record.span_id == execute.span_id
    assert record.attributes["exosphere_run_id"] == run_id


NO_PROVIDER_WARNING = "exo_otel: no OpenTelemetry SDK tracer provider is configured"


def test_without_a_configured_sdk_exo_otel_warns_once_and_the_program_runs() -> None:
    # As without opentelemetry-distro: no configurator sets an SDK tracer provider.
    done = launch_process(("OTEL_PYTHON_CONFIGURATOR", "none-installed"))
    assert done.returncode == 0, done.stderr
    assert re.findall(r"RUN_ID=(\S+)", done.stdout)  # the trigger and the runtime worked
    assert trigger_span_text(done.stdout) is None  # and nothing was exported
    assert done.stderr.count(NO_PROVIDER_WARNING) == 1, done.stderr
    assert "pip install opentelemetry-distro" in done.stderr


def test_with_the_distro_there_is_no_warning() -> None:
    done = launch_process()
    assert done.returncode == 0 and trigger_span_text(done.stdout) is not None
    assert NO_PROVIDER_WARNING not in done.stderr


def test_a_typo_in_the_id_generator_disables_opentelemetry_and_the_program_still_runs() -> None:
    # What the README warns about: the launcher aborts its whole start-up on an unknown generator.
    done = launch_process(("OTEL_PYTHON_ID_GENERATOR", "exosphre"))
    assert done.returncode == 0, done.stderr
    assert re.findall(r"RUN_ID=(\S+)", done.stdout)
    assert trigger_span_text(done.stdout) is None
    assert "exosphre" in done.stderr
