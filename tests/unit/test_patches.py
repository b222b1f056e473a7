"""One patch-table row (`exo_otel.core.patches.Patch`): checking, wrapping and unwrapping a target."""

from __future__ import annotations

import asyncio
import inspect
import sys
import types
import unittest.mock
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from exo_otel.core.patches import Patch, is_ours
from exo_otel.sdk.worker import make_worker_wrapper


@pytest.fixture
def module() -> Iterator[types.ModuleType]:
    module = types.ModuleType("exo_otel_patch_target")

    class Service:
        def handle(self, request: str, reply: str = "") -> str:
            return f"{request}:{reply}"

    module.Service = Service  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    yield module
    del sys.modules[module.__name__]


def _tagging(side: str) -> Callable[..., Any]:
    def wrapper(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        return f"{side}({wrapped(*args, **kwargs)})"

    return wrapper


def test_problem_names_a_missing_target_and_a_changed_signature(module: types.ModuleType) -> None:
    assert Patch(module.__name__, "Service.handle", _tagging, ("self", "request")).problem(module) is None
    missing = Patch(module.__name__, "Service.gone", _tagging, ("self",)).problem(module)
    assert missing == "exo_otel_patch_target.Service.gone is missing"
    changed = Patch(module.__name__, "Service.handle", _tagging, ("self", "state_id")).problem(module)
    assert changed == (
        "exo_otel_patch_target.Service.handle takes ('self', 'request', 'reply'), "
        "expected ('self', 'state_id')"
    )


def test_wrap_and_unwrap_restore_the_target(module: types.ModuleType) -> None:
    patch = Patch(module.__name__, "Service.handle", _tagging, ("self", "request"))
    original = module.Service.__dict__["handle"]
    patch.wrap(module, "traced")
    assert module.Service().handle("a", reply="b") == "traced(a:b)"
    assert patch.problem(module) is None  # the check sees through a wrapper
    assert not patch.is_wrapped()  # a wrapper from outside exo_otel is not ours
    patch.unwrap()
    assert module.Service.__dict__["handle"] is original
    assert module.Service().handle("a") == "a:"


def test_a_plain_wrapper_calls_the_wrapper_alike_and_unwrap_restores_the_method(
    module: types.ModuleType,
) -> None:
    original = module.Service.__dict__["handle"]
    seen: list[tuple[Any, Any, tuple[Any, ...], dict[str, Any]]] = []

    def recording(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        seen.append((wrapped, instance, args, kwargs))
        return f"plain({wrapped(*args, **kwargs)})"

    recording.__module__ = "exo_otel.tests"  # counted as exo_otel's, as the factories' wrappers are
    plain = Patch(module.__name__, "Service.handle", lambda side: recording, ("self", "request"), plain=True)
    plain.wrap(module, None)
    service = module.Service()
    assert service.handle("a", reply="b") == "plain(a:b)"
    assert module.Service.handle(service, "c") == "plain(c:)"  # called through the class alike
    (bound, instance, args, kwargs), _ = seen
    assert instance is service and args == ("a",) and kwargs == {"reply": "b"}
    assert bound.__func__ is original and bound.__self__ is service
    wrapped_method = module.Service.__dict__["handle"]
    assert wrapped_method.__wrapped__ is original and wrapped_method.__name__ == "handle"
    assert plain.is_wrapped() and plain.problem(module) is None  # the check sees through it
    plain.unwrap()
    assert module.Service.__dict__["handle"] is original and not plain.is_wrapped()
    assert module.Service().handle("a") == "a:"


def test_a_plain_wrapper_of_a_coroutine_method_is_a_coroutine_function_to_introspection(
    module: types.ModuleType,
) -> None:
    """Upstream's own runtime tests `patch("...Runtime._notify_executed")` and await the mock: `patch`
    makes an AsyncMock only of what `inspect.iscoroutinefunction` calls a coroutine function."""

    async def notify(self: Any, state_id: str) -> str:
        return f"notified {state_id}"

    module.Service.notify = notify

    def passing(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        return wrapped(*args, **kwargs)

    passing.__module__ = "exo_otel.tests"
    plain = Patch(module.__name__, "Service.notify", lambda side: passing, ("self", "state_id"), plain=True)
    plain.wrap(module, None)
    assert inspect.iscoroutinefunction(module.Service.notify)
    assert asyncio.run(module.Service().notify("s1")) == "notified s1"
    with unittest.mock.patch(f"{module.__name__}.Service.notify") as mocked:
        assert isinstance(mocked, unittest.mock.AsyncMock)
        asyncio.run(module.Service().notify("s2"))
        mocked.assert_awaited_once_with("s2")
    plain.unwrap()
    assert module.Service.__dict__["notify"] is notify


def test_is_ours_tells_exo_otel_wrappers_from_others(module: types.ModuleType) -> None:
    import wrapt

    ours = wrapt.FunctionWrapper(module.Service.handle, make_worker_wrapper(None))  # type: ignore[arg-type]
    theirs = wrapt.FunctionWrapper(module.Service.handle, _tagging("x"))
    assert is_ours(ours) and not is_ours(theirs) and not is_ours(module.Service.handle)


def test_apply_wraps_once_and_leaves_a_target_of_another_shape_alone(
    module: types.ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    ours = Patch(module.__name__, "Service.handle", make_worker_wrapper, ("self", "request"))
    assert ours.apply(module, None, "Service 1.0")  # type: ignore[arg-type]
    assert ours.is_wrapped()
    assert not ours.apply(module, None, "Service 1.0")  # type: ignore[arg-type]  # wrapped already
    ours.unwrap()
    assert not ours.is_wrapped()
    other = Patch(module.__name__, "Service.handle", make_worker_wrapper, ("self", "state_id"))
    with caplog.at_level("WARNING", logger="exo_otel"):
        assert not other.apply(module, None, "Service 1.0")  # type: ignore[arg-type]
    assert "exo_otel_patch_target.Service.handle does not look like Service 1.0" in caplog.text
    assert not other.is_wrapped()
