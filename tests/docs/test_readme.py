"""The README's and the package docstring's Python examples run as written."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

from exospherehost import BaseNode, GraphNodeModel
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel

import exo_otel
from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from exo_otel_demo.embedded import EmbeddedStateManager
from helpers.sm_fixtures import running_runtime, sdk_state_manager, wait_for_run, wait_until

README = Path(__file__).parents[2] / "README.md"


def _run(source: str) -> None:
    # A fresh interpreter: the examples set global providers, as a user's program would.
    done = subprocess.run(
        [sys.executable, "-c", source], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


def test_readme_python_examples_run() -> None:
    # Blocks marked ```python file=NAME are the complete example's files: tests/docs/test_readme_example.py
    # runs those, as separate processes.
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


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n{title}\n")
    following = re.search(r"\n#{2,3} ", text[start + len(title) + 2 :])
    return text[start : start + len(title) + 2 + following.start()] if following else text[start:]


def _log_example() -> str:
    [block] = re.findall(r"```python\n(.*?)```", _section("### Logs"), flags=re.S)
    return block


def _python(source: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", source], capture_output=True, text=True, timeout=60, check=False
    )


def test_the_log_format_example_works_without_the_instrumentation() -> None:
    done = _python(_log_example())
    assert done.returncode == 0, done.stderr
    assert done.stderr == "WARNING [trace 0 run -] scored 4 items\n"
    # What the defaults prevent: the same format without them fails on every record.
    without_defaults = re.sub(r"\n\s*defaults=\{.*?\},?\n", "\n", _log_example())
    assert "defaults" not in without_defaults
    broken = _python(without_defaults)
    assert "--- Logging error ---" in broken.stderr and "KeyError: 'otelTraceID'" in broken.stderr


def test_the_log_format_example_shows_the_trace_and_run_inside_a_run() -> None:
    inside_a_run = textwrap.dedent(
        """
        from opentelemetry import context, trace
        from opentelemetry.sdk.trace import TracerProvider

        from exo_otel import ExosphereInstrumentor
        from exo_otel.sdk.logs import with_log_context

        provider = TracerProvider()
        ExosphereInstrumentor().instrument(tracer_provider=provider)
        span = provider.get_tracer("readme").start_span("execute Node")
        # What the runtime does where it places a state in its run (baggage alone is not trusted).
        context.attach(with_log_context(trace.set_span_in_context(span), "run-7"))
        print(f"{span.get_span_context().trace_id:032x}")
        """
    )
    done = _python(inside_a_run + _log_example())
    assert done.returncode == 0, done.stderr
    trace_id = done.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id) and int(trace_id, 16) != 0
    assert done.stderr == f"WARNING [trace {trace_id} run run-7] scored 4 items\n"


def test_the_install_section_says_how_to_install_today() -> None:
    install = _section("## Install")
    assert "not on PyPI yet" in install
    assert "pip install -e ./exo-otel" in install
    assert "python -m build --wheel" in install and "pip wheel --no-deps" in install
    wheel = f"exo_otel-{exo_otel.__version__}-py3-none-any.whl"
    assert wheel in install  # the name the build gives (tests/docs/test_packaging.py builds it)


class _Echo(BaseNode):  # type: ignore[misc]
    class Inputs(BaseModel):
        text: str

    class Outputs(BaseModel):
        text: str

    async def execute(self) -> BaseNode.Outputs:
        return self.Outputs(text=self.inputs.text)


async def test_the_span_table_lists_every_span_exo_otel_makes(
    state_manager: EmbeddedStateManager,
    span_exporter: InMemorySpanExporter,
    instrumentor: ExosphereInstrumentor,
) -> None:
    """Every kind of span the SDK side makes, from a real graph upsert, lookup, trigger and run."""
    namespace = "readme-table"
    async with running_runtime(state_manager, namespace, [_Echo]):
        client = sdk_state_manager(state_manager, namespace)
        node = GraphNodeModel(node_name="_Echo", namespace=namespace, identifier="echo", inputs={"text": "x"})
        await client.upsert_graph("table", [node], {}, polling_interval=0.05)  # type: ignore[arg-type]
        await client.get_graph("table")
        run_id = (await client.trigger("table"))["run_id"]
        assert await wait_for_run(state_manager, run_id) == "SUCCESS"
        await wait_until(lambda: any(s.name == "node echo" for s in span_exporter.get_finished_spans()))
    made = {span.name.split(" ", 1)[0] for span in span_exporter.get_finished_spans()}
    assert made == {"trigger", "node", "execute", "upsert_graph", "get_graph"}
    table = _section("## What you get")
    listed = set(re.findall(r"^\| `(\w+) \{", table, flags=re.M))
    assert made <= listed, made - listed
