"""The real upstream state manager starts here and answers the SDK (skipped without its source)."""

from __future__ import annotations

import uuid

import pytest
from exospherehost import StateManager

from helpers.upstream_sm import UpstreamServer

pytestmark = pytest.mark.upstream


async def test_upstream_answers_the_sdk(upstream_sm: UpstreamServer) -> None:
    sm = StateManager(namespace=f"smoke-{uuid.uuid4().hex[:8]}", state_manager_uri=upstream_sm.uri,
                      key=upstream_sm.api_key)
    with pytest.raises(Exception, match="404"):
        await sm.trigger("no-such-graph")
