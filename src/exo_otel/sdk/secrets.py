"""Around ``Runtime._get_secrets``: remember the values a node receives, so telemetry never shows them."""

from __future__ import annotations

from typing import Any

from exo_otel.core.spans import guard
from exo_otel.core.wrapping import AsyncMethod
from exo_otel.sdk.runtime import current_execution
from exo_otel.sdk.telemetry import Telemetry


def make_secrets_wrapper(telemetry: Telemetry) -> AsyncMethod:
    """Wrap ``Runtime._get_secrets(state_id)``: its answer's values go to the execution's redactor."""

    async def traced_get_secrets(
        wrapped: AsyncMethod, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        secrets = await wrapped(*args, **kwargs)
        execution = current_execution.get()
        if execution is not None and isinstance(secrets, dict):
            with guard("remembering a state's secrets"):
                execution.secrets.add(secrets.values())
        return secrets

    return traced_get_secrets
