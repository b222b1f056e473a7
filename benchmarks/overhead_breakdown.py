"""Where a runtime's CPU goes, per state: opt-in timers for runtime_overhead.py (``--breakdown``).

Wraps, in the runtime process, exo_otel's per-state hooks, the SDK calls they make, the log record
factory, the OTLP span export and the garbage collector with thread CPU timers (``time.thread_time``),
and prints microseconds per state for the serving phase. The timers cost CPU themselves (two clock
reads per call): compare the parts with each other, and take totals from a run without them.
"""

from __future__ import annotations

import gc
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

_spent: dict[str, float] = {}
_gc_started = 0.0


def _timed(owner: Any, name: str, label: str, is_async: bool = False) -> None:
    original = getattr(owner, name)
    _spent[label] = 0.0
    if is_async:
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return await original(*args, **kwargs)
            finally:
                _spent[label] += time.thread_time() - started
        setattr(owner, name, timed_async)
    else:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                _spent[label] += time.thread_time() - started
        setattr(owner, name, timed)


def _gc_timer(phase: str, info: dict[str, Any]) -> None:
    global _gc_started
    if phase == "start":
        _gc_started = time.thread_time()
    else:
        label = f"gc generation {info['generation']}"
        _spent[label] = _spent.get(label, 0.0) + time.thread_time() - _gc_started


def install(with_exo_otel: bool) -> None:
    """Before the runtime is made: wrap what is to be timed."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk import trace as sdk_trace

    _timed(logging.LogRecord, "__init__", "log record made (any mode)")
    _timed(OTLPSpanExporter, "export", "OTLP span export (its thread)")
    _timed(sdk_trace.Tracer, "start_span", "SDK start_span")
    _timed(sdk_trace.Span, "end", "SDK span end")
    _timed(sdk_trace.Span, "set_attribute", "SDK set_attribute")
    gc.callbacks.append(_gc_timer)
    if with_exo_otel:
        from exo_otel.sdk import execution, logs, runtime

        _timed(runtime.RuntimeTracing, "place", "exo_otel place (finding the run)", is_async=True)
        _timed(runtime.RuntimeTracing, "start", "exo_otel start (placed + begin)")
        _timed(execution, "begin", "exo_otel begin (spans started)")
        runtime.begin = execution.begin
        _timed(execution, "finish", "exo_otel finish (spans ended)")
        runtime.finish = execution.finish
        _timed(runtime.RuntimeTracing, "on_polled", "exo_otel on_polled")
        # The factory exo_otel installs is made by `correlating_factory`: the one it makes is timed.
        make_factory = logs.correlating_factory

        def timed_factory(previous: Any) -> Any:
            holder = type("FactoryHolder", (), {"factory": staticmethod(make_factory(previous))})
            _timed(holder, "factory", "exo_otel log factory (with the record)")
            setattr(holder.factory, logs._PREVIOUS, previous)  # what removing the factory puts back
            return holder.factory

        logs.correlating_factory = timed_factory


def start() -> None:
    """At GO: count from here."""
    for label in _spent:
        _spent[label] = 0.0


def report(mode: str, states: int, write: Callable[[str], Any] = sys.stderr.write) -> None:
    """At STOP: microseconds per state, by part."""
    for label, seconds in sorted(_spent.items()):
        if seconds:
            write(f"breakdown {mode:12} {label:42} {seconds / states * 1e6:8.1f} us/state\n")
