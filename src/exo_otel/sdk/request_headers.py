"""Headers exo_otel adds to requests the SDK makes anyway: the caller's W3C context on a trigger
request, an execution's CPU time on its report. Set for the duration of one SDK call; the aiohttp
wrapper adds them to the requests that call makes."""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from typing import Any

from multidict import CIMultiDict

from exo_otel.core.spans import guard
from exo_otel.core.wrapping import AsyncMethod, Wrapper
from exo_otel.sdk.telemetry import Telemetry

_added: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "exo_otel_added_headers", default=None
)


def add_headers(headers: Mapping[str, str] | None) -> contextvars.Token[Mapping[str, str] | None]:
    """From now on in this context, requests get ``headers`` (None or empty: none); `stop_adding` ends it."""
    return _added.set(headers or None)


def stop_adding(token: contextvars.Token[Mapping[str, str] | None]) -> None:
    _added.reset(token)


def make_request_headers_wrapper(telemetry: Telemetry) -> Wrapper:
    """Around ``aiohttp.ClientSession._request``: add the headers set by `add_headers`, if any.

    Headers already there win (the aiohttp client instrumentation, when on, writes its own after).
    """

    async def with_added_headers(
        wrapped: AsyncMethod, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        added = _added.get()
        if added:
            with guard("adding exo_otel's headers to a request"):
                headers = CIMultiDict(kwargs.get("headers") or {})
                for key, value in added.items():
                    if key not in headers:
                        headers[key] = value
                kwargs = {**kwargs, "headers": headers}
        return await wrapped(*args, **kwargs)

    return with_added_headers
