"""StateManagerInstrumentor outside a state manager: harmless, and clear about modules that do not match."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def _python(source: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )


def test_harmless_in_a_process_that_is_not_a_state_manager(tmp_path: Path) -> None:
    done = _python(
        """
        import sys
        from exo_otel import StateManagerInstrumentor
        StateManagerInstrumentor().instrument()
        import json, asyncio  # anything but the state manager
        assert not any(name == "app" or name.startswith("app.") for name in sys.modules)
        StateManagerInstrumentor().uninstrument()
        print("ok")
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_an_app_module_that_does_not_match_is_left_alone_and_named(tmp_path: Path) -> None:
    package = tmp_path / "app"
    package.mkdir()
    (package / "__init__.py").write_text("")
    # Someone else's `app.routes`: the names exist, the parameters do not match upstream 0.0.3.
    (package / "routes.py").write_text("async def trigger_graph(request):\n    return 1\n")
    done = _python(
        """
        import logging
        logging.basicConfig(level=logging.WARNING)
        from exo_otel import StateManagerInstrumentor
        StateManagerInstrumentor().instrument()
        import app.routes
        assert not hasattr(app.routes.trigger_graph, "__wrapped__")
        print("untouched")
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "untouched"
    assert "does not look like exospherehost state-manager 0.0.3" in done.stderr
    assert "app.routes.trigger_graph takes ('request',)" in done.stderr
    assert "app.routes.enqueue_states is missing" in done.stderr


def test_the_launcher_loads_both_entry_points_in_a_runtime_process(tmp_path: Path) -> None:
    launcher = Path(sys.executable).with_name("opentelemetry-instrument")
    script = tmp_path / "probe.py"
    script.write_text(
        "from exo_otel import ExosphereInstrumentor, StateManagerInstrumentor\n"
        "print(ExosphereInstrumentor().is_instrumented_by_opentelemetry,"
        " StateManagerInstrumentor().is_instrumented_by_opentelemetry)\n"
    )
    env = {
        "PATH": str(launcher.parent),
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
    }
    done = subprocess.run(
        [str(launcher), sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # The SDK side and the (idle: no state manager here) state manager side are both loaded.
    assert done.stdout.split() == ["True", "True"]
