"""Around ``Runtime._worker``: a worker stopped by cancellation or a BaseException ends its state's spans.

The SDK's worker marks a state done only after an ordinary outcome; cancellation, KeyboardInterrupt,
SystemExit or GeneratorExit from node code leave the loop with the state unfinished. Its spans end
here (outcome ``interrupted``, ERROR, the exception's type) and the exception goes on unchanged.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import context

from exo_otel.core.spans import guard
from exo_otel.core.wrapping import AsyncMethod
from exo_otel.sdk.execution import interrupt
from exo_otel.sdk.runtime import current_execution
from exo_otel.sdk.telemetry import Telemetry


def make_worker_wrapper(telemetry: Telemetry) -> AsyncMethod:
    """Wrap ``Runtime._worker(idx)``, the loop each worker task runs."""

    async def traced_worker(
        wrapped: AsyncMethod, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        try:
            return await wrapped(*args, **kwargs)
        except BaseException as exc:
            # Same task, same context: the execution the worker was in, if any.
            execution = current_execution.get()
            if execution is not None:
                current_execution.set(None)
                with guard("ending an interrupted state's spans"):
                    interrupt(execution, exc)
                if execution.token is not None:
                    with guard("detaching an interrupted state's context"):
                        context.detach(execution.token)
            raise

    return traced_worker
