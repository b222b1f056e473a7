"""The CPU time one execution's node code uses, exact while other executions share the event loop.

docs/trace-model.md, section "CPU time": the node's coroutine is driven one step at a time, and the
thread's CPU clock is read around each step, so what other executions do between the steps (on the
same event loop thread) is never counted. Functions the node hands to a thread through the event
loop's executor (``asyncio.to_thread``, ``loop.run_in_executor``) are measured on that thread and
added. CPU used in threads the node starts itself, in other processes, or by a thread the node does
not wait for before its execution ends is not counted.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Final

from exo_otel.core.wrapping import AsyncMethod
from exo_otel.sdk.telemetry import Telemetry

_clock: Final = time.thread_time_ns
# The meter of the node step running on this thread now, if any: whatever the step hands to an
# executor is that execution's.
_stepping = threading.local()


class CpuMeter:
    """One execution's CPU time: its node coroutine's steps, and the executor calls made from them."""

    __slots__ = ("_final", "_lock", "loop_ns", "thread_ns")

    def __init__(self) -> None:
        self.loop_ns = 0
        self.thread_ns = 0
        self._final: float | None = None
        self._lock = threading.Lock()

    def add_thread(self, ns: int) -> None:
        with self._lock:  # several executor threads may end at once
            self.thread_ns += ns

    @property
    def seconds(self) -> float:
        """The total, fixed the first time it is read (at the report, or the attempt's end): the span,
        the metric and the state manager side's run sum all get the same figure."""
        if self._final is None:
            with self._lock:
                self._final = (self.loop_ns + self.thread_ns) / 1e9
        return self._final


def stepping_meter() -> CpuMeter | None:
    """The meter of the node step running on this thread, if one is."""
    return getattr(_stepping, "meter", None)


class Metered:
    """Awaits ``coroutine``, adding the CPU time of each of its steps to ``meter``.

    What the coroutine returns or raises comes out unchanged; whatever is thrown in (a cancellation)
    goes in unchanged.
    """

    __slots__ = ("_coroutine", "_meter")

    def __init__(self, coroutine: Coroutine[Any, Any, Any], meter: CpuMeter) -> None:
        self._coroutine = coroutine
        self._meter = meter

    def __await__(self) -> Generator[Any, Any, Any]:
        coroutine, meter = self._coroutine, self._meter
        sent: Any = None
        thrown: BaseException | None = None
        while True:
            outer = getattr(_stepping, "meter", None)
            _stepping.meter = meter
            started = _clock()
            try:
                yielded = coroutine.send(sent) if thrown is None else coroutine.throw(thrown)
            except StopIteration as done:
                return done.value
            finally:
                meter.loop_ns += _clock() - started
                _stepping.meter = outer
            try:
                sent = yield yielded
                thrown = None
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as exc:  # thrown into the node, as awaiting it directly would
                sent, thrown = None, exc


def metered_call(function: Callable[..., Any], meter: CpuMeter) -> Callable[..., Any]:
    """``function``, adding the CPU time of the thread it runs on (while it runs) to ``meter``."""

    @functools.wraps(function)
    def measured(*args: Any, **kwargs: Any) -> Any:
        started = _clock()
        try:
            return function(*args, **kwargs)
        finally:
            meter.add_thread(_clock() - started)

    return measured


def make_executor_wrapper(telemetry: Telemetry) -> Callable[..., Any]:
    """Around ``BaseEventLoop.run_in_executor(executor, func, *args)``: called from a node's step, the
    function's thread CPU is the execution's."""

    def traced_run_in_executor(
        wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        meter = getattr(_stepping, "meter", None)
        if meter is None or len(args) < 2 or not callable(args[1]):
            return wrapped(*args, **kwargs)
        return wrapped(args[0], metered_call(args[1], meter), *args[2:], **kwargs)

    return traced_run_in_executor


def metered_node_call(meter_for: Callable[[], CpuMeter | None]) -> Callable[..., Any]:
    """A wrapper of ``BaseNode._execute``: its coroutine metered with the meter ``meter_for`` gives
    (None: not metered, as inside a step that is metered already)."""

    async def traced_execute(
        wrapped: AsyncMethod, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        meter = None if getattr(_stepping, "meter", None) is not None else meter_for()
        if meter is None:
            return await wrapped(*args, **kwargs)
        coroutine = wrapped(*args, **kwargs)
        if not isinstance(coroutine, Coroutine):
            return await coroutine
        return await Metered(coroutine, meter)

    return traced_execute
