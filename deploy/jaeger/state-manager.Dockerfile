# The upstream Exosphere state manager, unmodified, with exo_otel's state manager side: exo-otel from
# this checkout installed into the image's own venv and the app started under `opentelemetry-instrument`,
# which loads the `exosphere_state_manager` entry point in each uvicorn worker process.
# Build context is the repository root (see docker-compose.yml).
ARG EXOSPHERE_STATE_MANAGER_TAG=0.0.3
FROM ghcr.io/exospherehost/exosphere-state-manager:${EXOSPHERE_STATE_MANAGER_TAG}

COPY pyproject.toml README.md /opt/exo-otel/
COPY src /opt/exo-otel/src
# Into the app's venv (made by `uv sync` in the upstream image); opentelemetry-distro gives the
# launcher its SDK configurator (exporters from OTEL_* variables).
RUN uv pip install --python /api-server/.venv/bin/python /opt/exo-otel "opentelemetry-distro >= 0.66b0, < 0.67"

# Not `uv run`: it would sync the venv back to upstream's lock and remove exo-otel.
CMD ["/api-server/.venv/bin/opentelemetry-instrument", "/api-server/.venv/bin/python", "run.py", "--mode", "production", "--workers", "4"]
