"""Types and argument access shared by the wrappers of SDK methods."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

AsyncMethod = Callable[..., Awaitable[Any]]
Wrapper = Callable[[AsyncMethod, Any, tuple[Any, ...], dict[str, Any]], Awaitable[Any]]


def call_argument(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str, default: Any) -> Any:
    """An argument of a wrapped call, given by position (``self`` excluded) or by keyword."""
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default
