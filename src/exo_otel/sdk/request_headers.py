"""Headers exo_otel adds to requests the SDK makes anyway: the caller's W3C context on a trigger
request, an execution's CPU time on its report. Set for the duration of one SDK call; the aiohttp
wrapper adds them to the requests that call makes.

The wrapper is installed on first need (`wrap_requests_on_first_headers`): the first `add_headers`
with headers to add installs it, before the call's requests are made. A process that never adds any
(a runtime that triggers nothing, with CPU time off) keeps ``ClientSession._request`` unwrapped, so
its requests, the nodes' own included, pay nothing for it.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Mapping
from typing import Any, Final

from multidict import CIMultiDict

from exo_otel.core.spans import guard
from exo_otel.core.wrapping import AsyncMethod, Wrapper
from exo_otel.sdk.telemetry import Telemetry

_ADDING: Final = guard("adding exo_otel's headers to a request")
_added: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "exo_otel_added_headers", default=None
)


AddToken = contextvars.Token[Mapping[str, str] | None] | None


_install_wrapper: Callable[[], None] | None = None
_install_lock: Final = threading.Lock()


def wrap_requests_on_first_headers(install: Callable[[], None] | None) -> None:
    """``install`` wraps ``ClientSession._request``: called once, by the first `add_headers` that has
    headers to add. None: nothing to install (uninstrumented, or installed already)."""
    global _install_wrapper
    _install_wrapper = install


def add_headers(headers: Mapping[str, str] | None) -> AddToken:
    """From now on in this context, requests get ``headers`` (None or empty: none); `stop_adding` ends it."""
    headers = headers or None
    if headers is None:
        if _added.get() is None:
            return None  # none added now, none to add: nothing changes
    elif _install_wrapper is not None:
        _install_once()
    return _added.set(headers)


def _install_once() -> None:
    global _install_wrapper
    with _install_lock:  # event loops in several threads may add their first headers together
        install, _install_wrapper = _install_wrapper, None
        if install is not None:
            with _ADDING:
                install()


def adding_headers() -> bool:
    """Whether requests made in this context get headers now."""
    return _added.get() is not None


def stop_adding(token: AddToken) -> None:
    if token is not None:
        _added.reset(token)


def make_request_headers_wrapper(telemetry: Telemetry) -> Wrapper:
    """Around ``aiohttp.ClientSession._request``: add the headers set by `add_headers`, if any.

    Headers already there win (the aiohttp client instrumentation, when on, writes its own after).
    """

    # Not a coroutine function: it hands back the request's own coroutine (no extra one per request),
    # with the headers worked out when the call is made, as aiohttp works out its arguments.
    def with_added_headers(
        wrapped: AsyncMethod, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        added = _added.get()
        if added:
            with _ADDING:
                headers = CIMultiDict(kwargs.get("headers") or {})
                for key, value in added.items():
                    if key not in headers:
                        headers[key] = value
                kwargs = {**kwargs, "headers": headers}
        return wrapped(*args, **kwargs)

    return with_added_headers
