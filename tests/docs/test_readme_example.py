"""The README's complete example, run as a user would: its files and commands, each in its own process.

The state manager is ``exo-otel state-manager``, the runtime and the trigger run under
``opentelemetry-instrument``, and the trace arrives at an OTLP/gRPC receiver standing in for Jaeger.
Only the port and the OTLP endpoint are changed from what the README says.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from exo_otel import format_trace_id, run_span_id
from helpers.otlp_receiver import OtlpGrpcReceiver, Span
from helpers.sm_fixtures import free_port
from helpers.upstream_sm import UpstreamServer

README = Path(__file__).parents[2] / "README.md"
BIN = Path(sys.executable).parent
README_PORT = "8000"
README_ENDPOINT = "http://localhost:4317"
KIND_PRODUCER, KIND_INTERNAL, KIND_CONSUMER = 4, 1, 5


@dataclass(frozen=True)
class Command:
    """One command of the README: its environment assignments and its argument list."""

    env: dict[str, str]
    argv: list[str]


def example_section() -> str:
    text = README.read_text()
    start = text.index("## A complete example")
    return text[start : text.index("\n## ", start)]


def example_files() -> dict[str, str]:
    return dict(re.findall(r"```python file=(\S+)\n(.*?)```", example_section(), flags=re.S))


def example_commands(port: str, endpoint: str) -> list[Command]:
    """The sh blocks of the example, each as the command it ends with, in README order."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", example_section(), flags=re.S):
        block = block.replace(README_PORT, port).replace(README_ENDPOINT, endpoint)
        env: dict[str, str] = {}
        argv: list[str] = []
        for line in block.strip().splitlines():
            words = shlex.split(line)
            if words[0] == "export":
                words = words[1:]
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                name, _, value = words.pop(0).partition("=")
                env[name] = value
            argv = words or argv
        commands.append(Command(env, argv))
    return commands


def user_env() -> dict[str, str]:
    """A shell where the project's venv is active and nothing of ours is configured."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "EXOSPHERE_", "EXO_OTEL_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    return env


@pytest.fixture
def receiver() -> Iterator[OtlpGrpcReceiver]:
    with OtlpGrpcReceiver() as rx:
        yield rx


def _start(command: Command, cwd: Path, log: str) -> subprocess.Popen[str]:
    out = open(cwd / log, "w")  # noqa: SIM115  # closed with the process, by the finally below
    return subprocess.Popen(
        command.argv, env={**user_env(), **command.env}, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_line(path: Path, pattern: str, process: subprocess.Popen[str], timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, path.read_text(), flags=re.M)
        if match:
            return match.group(0)
        assert process.poll() is None, path.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} not printed in {timeout} s: {path.read_text()}")


def _trace(receiver: OtlpGrpcReceiver, run_id: str, names: set[str]) -> dict[str, Span]:
    trace_id = format_trace_id(run_id)

    def arrived(rx: OtlpGrpcReceiver) -> dict[str, Span] | None:
        spans = {s.name: s for s in rx.spans() if s.trace_id == trace_id}
        return spans if names <= set(spans) else None

    # The launcher's batch span processor exports every 5 s.
    return receiver.wait_for(arrived, timeout=30)


def _trigger(command: Command, cwd: Path) -> str:
    done = subprocess.run(
        command.argv, env={**user_env(), **command.env}, cwd=cwd, capture_output=True, text=True,
        timeout=90, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    match = re.search(r"^run id (\S+): trace http://localhost:16686/trace/([0-9a-f]{32})$", done.stdout, re.M)
    assert match, done.stdout
    run_id, trace_id = match.groups()
    assert trace_id == format_trace_id(run_id)
    return run_id


def test_the_complete_example_gives_one_trace_across_processes(
    tmp_path: Path, receiver: OtlpGrpcReceiver
) -> None:
    state_manager, runtime, trigger = example_commands(str(free_port()), receiver.endpoint)
    assert state_manager.argv[:2] == ["exo-otel", "state-manager"]
    with _started(state_manager, tmp_path, "state-manager.log") as sm:
        _wait_for_line(tmp_path / "state-manager.log", r"^ready: .*$", sm)
        run_example(tmp_path, receiver, runtime, trigger)


@pytest.mark.upstream
def test_the_complete_example_against_the_real_state_manager(
    tmp_path: Path, receiver: OtlpGrpcReceiver, upstream_sm: UpstreamServer
) -> None:
    _state_manager, runtime, trigger = example_commands(str(free_port()), receiver.endpoint)
    where = {"EXOSPHERE_STATE_MANAGER_URI": upstream_sm.uri, "EXOSPHERE_API_KEY": upstream_sm.api_key}
    run_example(tmp_path, receiver, Command({**runtime.env, **where}, runtime.argv),
                Command({**trigger.env, **where}, trigger.argv))


@contextlib.contextmanager
def _started(command: Command, cwd: Path, log: str) -> Iterator[subprocess.Popen[str]]:
    process = _start(command, cwd, log)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_example(tmp_path: Path, receiver: OtlpGrpcReceiver, runtime: Command, trigger: Command) -> None:
    """The README's files, its runtime command, then its trigger; the run's trace as it arrives."""
    files = example_files()
    assert set(files) == {"hello_graph.py", "runtime.py", "trigger.py"}
    for name, source in files.items():
        (tmp_path / name).write_text(source)
    assert runtime.argv == ["opentelemetry-instrument", "python", "runtime.py"]
    assert trigger.argv == ["opentelemetry-instrument", "python", "trigger.py"]
    with _started(runtime, tmp_path, "runtime.log") as rt:
        _wait_for_line(tmp_path / "runtime.log", r"Registered nodes: .*$", rt)  # as the README says
        run_id = _trigger(trigger, tmp_path)
        spans = _trace(receiver, run_id, {"trigger greet", "node greet", "node shout", "execute Greet",
                                          "execute Shout"})
        root = spans["trigger greet"]
        assert (root.kind, root.parent_span_id, root.service_name) == (KIND_PRODUCER, None, "hello-trigger")
        assert root.span_id == f"{run_span_id(run_id):016x}"
        for identifier, node_name in (("greet", "Greet"), ("shout", "Shout")):
            node, execute = spans[f"node {identifier}"], spans[f"execute {node_name}"]
            assert (node.kind, node.parent_span_id, node.service_name) == (KIND_INTERNAL, root.span_id,
                                                                            "hello-runtime")
            assert (execute.kind, execute.parent_span_id) == (KIND_CONSUMER, node.span_id)
            # In the run's trace (`_trace` takes only those), under the state's node span.
            assert execute.trace_id == node.trace_id == format_trace_id(run_id)

        # The same trigger without the launcher: the runtime still fills the run's trace, under the
        # root span id nobody emits (what the README says about an uninstrumented trigger).
        bare_run = _trigger(Command(trigger.env, trigger.argv[1:]), tmp_path)
        names = {"node greet", "node shout", "execute Greet", "execute Shout"}
        bare_spans = _trace(receiver, bare_run, names)
        assert "trigger greet" not in bare_spans
        for identifier in ("greet", "shout"):
            assert bare_spans[f"node {identifier}"].parent_span_id == f"{run_span_id(bare_run):016x}"
