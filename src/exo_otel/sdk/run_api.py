"""The HTTP side of the run API placement: one session, a call budget (token bucket), the APIs' health."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import quote

import aiohttp

_logger = logging.getLogger(__name__)


class RunApiClient:
    """GETs under ``{base_uri}/{version}/namespace/{namespace}/``, one session, at most ``rate`` a second.

    Not thread-safe: used from the runtime's event loop only.
    """

    def __init__(
        self, base_uri: str, namespace: str, api_key: str, version: str, rate: float, timeout_s: float
    ) -> None:
        self._prefix = f"{base_uri.rstrip('/')}/{version}/namespace/{quote(namespace, safe='')}"
        self._headers = {"x-api-key": api_key}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.rate = max(0.0, rate)
        self._tokens = max(1.0, self.rate)
        self._tokens_at = time.monotonic()
        self._session: aiohttp.ClientSession | None = None
        self.latency: float | None = None
        """Moving average of the calls' durations, failed ones included (a hanging API counts its timeout)."""
        self.failures = 0
        """Calls failed in a row."""
        self.successes = 0
        """Calls answered usefully, ever: until one is, nothing shows that waiting for the APIs can pay."""
        self.failed_at = float("-inf")
        self.calls = 0
        self.sessions_opened = 0

    @property
    def session_open(self) -> bool:
        return self._session is not None and not self._session.closed

    async def spend(self) -> None:
        """Wait until the budget allows one more call, and take it (a bucket of one second's calls)."""
        now = time.monotonic()
        self._tokens = min(max(1.0, self.rate), self._tokens + (now - self._tokens_at) * self.rate)
        self._tokens_at = now
        if self._tokens < 1.0:
            await asyncio.sleep((1.0 - self._tokens) / self.rate)
            self._tokens, self._tokens_at = 1.0, time.monotonic()
        self._tokens -= 1.0

    def has_spare(self, fraction: float) -> bool:
        """Whether the bucket holds at least ``fraction`` of a second's calls: calls that can only help
        later leave the budget to the states waiting now."""
        tokens = min(max(1.0, self.rate), self._tokens + (time.monotonic() - self._tokens_at) * self.rate)
        return tokens >= fraction * max(1.0, self.rate)

    def failing(self, within_s: float = 10.0) -> bool:
        """Whether the last call failed less than ``within_s`` seconds ago."""
        return self.failures > 0 and time.monotonic() - self.failed_at < within_s

    def backoff_s(self) -> float:
        """How long to pause after the failures in a row: 0.5 s, 1 s, ... up to 30 s; 0 when none."""
        return min(30.0, 0.25 * 2 ** min(self.failures, 7)) if self.failures else 0.0

    async def get(self, path: str) -> Any:
        """The JSON body of ``GET path``; None on any failure (logged at debug)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
            self.sessions_opened += 1
        self.calls += 1
        url = f"{self._prefix}/{path}"
        started = time.monotonic()
        body: Any = None
        try:
            async with self._session.get(url) as response:
                if response.status == 200:
                    body = await response.json(content_type=None)
                else:
                    _logger.debug("run API placement: GET %s answered %s", url, response.status)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            _logger.debug("run API placement: GET %s failed: %r", url, exc)
        elapsed = time.monotonic() - started
        self.latency = elapsed if self.latency is None else 0.7 * self.latency + 0.3 * elapsed
        if body is None:
            self.failures += 1
            self.failed_at = time.monotonic()
        else:
            self.failures = 0
            self.successes += 1
        return body

    async def close(self) -> None:
        """Close the session (a later call opens a new one). Its swap is done before the first await."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()
