"""The deploy stack's state manager: the upstream image plus exo_otel's state manager side, launched."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

STACK_DIR = Path(__file__).resolve().parents[2] / "deploy" / "jaeger"


def test_state_manager_image_is_upstream_plus_exo_otel_under_the_launcher() -> None:
    compose = yaml.safe_load((STACK_DIR / "docker-compose.yml").read_text())
    service = compose["services"]["state-manager"]
    assert service["build"]["dockerfile"] == "deploy/jaeger/state-manager.Dockerfile"
    assert (STACK_DIR / "../.." / "pyproject.toml").resolve().is_file()
    dockerfile = (STACK_DIR / "state-manager.Dockerfile").read_text()
    assert re.search(
        r"^FROM ghcr\.io/exospherehost/exosphere-state-manager:\$\{EXOSPHERE_STATE_MANAGER_TAG\}",
        dockerfile,
        re.MULTILINE,
    )
    assert re.search(
        r'uv pip install --python /api-server/\.venv/bin/python /opt/exo-otel "opentelemetry-distro',
        dockerfile,
    )
    command = re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)
    assert command is not None
    assert yaml.safe_load(command.group(1))[:3] == [
        "/api-server/.venv/bin/opentelemetry-instrument",
        "/api-server/.venv/bin/python",
        "run.py",
    ]
    environment = service["environment"]
    assert environment["OTEL_TRACES_EXPORTER"] == "otlp"
    assert environment["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317"
    assert "otel-collector" in service["depends_on"]


def test_the_entry_point_names_the_state_manager_instrumentor() -> None:
    import importlib.metadata

    points = importlib.metadata.entry_points(group="opentelemetry_instrumentor")
    loaded = {point.name: point.load() for point in points if point.value.startswith("exo_otel.")}
    from exo_otel import StateManagerInstrumentor

    assert loaded["exosphere_state_manager"] is StateManagerInstrumentor
