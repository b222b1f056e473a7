"""An embedded, in-memory Exosphere state manager speaking the upstream HTTP API, for tests and demos.

Usage::

    import asyncio

    from exo_otel_demo.embedded import EmbeddedStateManager

    async def main() -> None:
        async with EmbeddedStateManager() as sm:
            print(sm.uri, sm.api_key)  # give these to exospherehost's StateManager and Runtime

    asyncio.run(main())
"""

from __future__ import annotations

from exo_otel_demo.embedded.models import RunStatus, StateStatus, StatusChange
from exo_otel_demo.embedded.server import EmbeddedStateManager
from exo_otel_demo.embedded.store import StateView

__all__ = ["EmbeddedStateManager", "RunStatus", "StateStatus", "StateView", "StatusChange"]
