"""How a runtime tells the state manager side what an execution's CPU time was (docs/trace-model.md,
section "CPU time"): one header on the report request it makes anyway (executed, errored, prune,
re-enqueue-after), which a state manager without the side ignores."""

from __future__ import annotations

import math
from typing import Final

CPU_TIME_HEADER: Final = "x-exo-otel-cpu-time"
"""Seconds of CPU the reported attempt's node code used, as a decimal number."""

MAX_CPU_TIME_S: Final = 365 * 24 * 3600.0
"""No attempt reports more than a year of CPU: a larger value is not a measurement."""


def cpu_time_header(seconds: float) -> str:
    """The header's value: ``repr`` of the float, which reads back to the same float."""
    return repr(float(seconds))


def read_cpu_time_header(value: object) -> float | None:
    """The seconds a header value says; None for anything that is not a finite number in range."""
    if not isinstance(value, str) or len(value) > 32:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_CPU_TIME_S:
        return None
    return seconds
