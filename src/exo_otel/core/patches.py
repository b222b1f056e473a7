"""`Patch`: one row of an instrumentor's patch table, and checking, wrapping and unwrapping it.

Both instrumentors (the SDK side's and the state manager side's) describe what they wrap as rows of
this one shape: the module a target lives in, its dotted name there, the factory making its wrapper
from the side's telemetry, and the parameters the wrapper relies on. A target that is missing or
takes other parameters than those (another version of the code it patches) is reported by
`Patch.problem` and left alone by the instrumentors, which log it: wrapping it would break calls.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import MethodType, ModuleType
from typing import Any

import wrapt
from opentelemetry.instrumentation.utils import unwrap

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Patch[T]:
    """A target (``attribute`` of ``module``, dotted for a method: ``"Class.method"``), the factory of
    its wrapper, and the first parameters the target must take for the wrapper to read its arguments.

    ``plain``: the target is a method called once per state, wrapped by a plain function instead of a
    wrapt proxy (`plain_method`: the same wrapper call, without the proxy's binding per call)."""

    module: str
    attribute: str
    factory: Callable[[T], Callable[..., Any]]
    parameters: tuple[str, ...]
    plain: bool = False

    @property
    def target(self) -> str:
        return f"{self.module}.{self.attribute}"

    def resolve(self, module: ModuleType) -> tuple[Any, str, Any]:
        """(owner, name, current value) of the target in ``module``; AttributeError when it is absent."""
        owner: Any = module
        *path, name = self.attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        return owner, name, getattr(owner, name)

    def problem(self, module: ModuleType) -> str | None:
        """Why the target in ``module`` is not what the wrapper expects, or None when it is."""
        try:
            _owner, _name, current = self.resolve(module)
        except AttributeError:
            return f"{self.target} is missing"
        current = getattr(current, "__wrapped__", current)
        try:
            parameters = tuple(inspect.signature(current).parameters)
        except (TypeError, ValueError):
            return f"{self.target} has no readable signature"
        if parameters[: len(self.parameters)] != self.parameters:
            return f"{self.target} takes {parameters}, expected {self.parameters}"
        return None

    def apply(self, module: ModuleType, side: T, supported: str) -> bool:
        """Wrap the target in ``module`` for ``side`` when it looks like ``supported`` (the version the
        wrapper was written for) and is not wrapped by exo_otel already; True when this call wrapped it.
        A target of another shape, or a failure, is logged and the target left alone: never raised."""
        try:
            problem = self.problem(module)
            if problem is not None:
                _logger.warning(
                    "exo_otel: %s does not look like %s (%s); it is left unwrapped and its telemetry is "
                    "missing", self.target, supported, problem,
                )
                return False
            if self.is_wrapped():
                return False
            self.wrap(module, side)
            return True
        except Exception:
            _logger.warning("exo_otel: wrapping %s failed", self.target, exc_info=True)
            return False

    def wrap(self, module: ModuleType, side: T) -> None:
        """Wrap the target in ``module`` with the wrapper the factory makes for ``side``."""
        owner, name, current = self.resolve(module)
        if self.plain:
            setattr(owner, name, plain_method(current, self.factory(side)))
        else:
            wrapt.wrap_function_wrapper(owner, name, self.factory(side))

    def unwrap(self) -> None:
        """Restore the target, when its module is imported and the target is wrapped."""
        module = sys.modules.get(self.module)
        if module is None:
            return
        owner, name, current = self.resolve(module)
        if _PLAIN_WRAPPER in getattr(current, "__dict__", {}):
            setattr(owner, name, current.__wrapped__)
        else:
            unwrap(owner, name)

    def is_wrapped(self) -> bool:
        """Whether the target is currently one of exo_otel's wrappers."""
        module = sys.modules.get(self.module)
        if module is None:
            return False
        try:
            _owner, _name, current = self.resolve(module)
        except AttributeError:
            return False
        return is_ours(current)


_PLAIN_WRAPPER = "_exo_otel_wrapper"


def plain_method(original: Callable[..., Any], wrapper: Callable[..., Any]) -> Callable[..., Any]:
    """A function to put on a class in place of the method ``original``: each call is
    ``wrapper(bound original, instance, args, kwargs)``, as with a wrapt function wrapper.
    ``__wrapped__`` is ``original`` (what `Patch.unwrap` puts back). An ``async def`` original gives a
    function that says it is a coroutine function too (it returns the wrapper's coroutine), so
    introspection sees the method's kind unchanged: ``unittest.mock.patch`` of it makes an
    ``AsyncMock``, as on the unwrapped class."""

    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        return wrapper(MethodType(original, self), self, args, kwargs)

    functools.update_wrapper(method, original)
    if inspect.iscoroutinefunction(original):
        inspect.markcoroutinefunction(method)
    setattr(method, _PLAIN_WRAPPER, wrapper)
    return method


def is_ours(value: object) -> bool:
    """Whether a value is a wrapper exo_otel installed (a wrapt proxy or a `plain_method` whose wrapper
    is exo_otel's)."""
    if isinstance(value, wrapt.BaseObjectProxy):
        wrapper = getattr(value, "_self_wrapper", None)
    else:
        wrapper = getattr(value, "__dict__", {}).get(_PLAIN_WRAPPER)
        if wrapper is None:
            return False
    return str(getattr(wrapper, "__module__", "")).startswith("exo_otel.")
