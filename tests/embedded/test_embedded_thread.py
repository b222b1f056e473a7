"""The embedded state manager serving synchronous callers from its own thread."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

from exo_otel_demo.embedded import EmbeddedStateManager


def test_serves_from_a_thread_and_releases_the_port() -> None:
    with EmbeddedStateManager(api_key="k") as sm:
        port = sm.port
        request = urllib.request.Request(f"{sm.uri}/v0/namespace/ns/graph/g", headers={"x-api-key": "k"})
        try:
            urllib.request.urlopen(request, timeout=10)
        except urllib.error.HTTPError as exc:
            assert exc.code == 404
            assert isinstance(json.loads(exc.read())["detail"], str)
        assert sm.states() == [] and sm.run_ids() == []
    with socket.socket() as sock:
        # No listener is left: with SO_REUSEADDR only a live listener (not TIME_WAIT) blocks the bind.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()


def test_generates_a_key_when_none_is_given() -> None:
    first, second = EmbeddedStateManager(), EmbeddedStateManager()
    assert len(first.api_key) >= 20 and first.api_key != second.api_key
