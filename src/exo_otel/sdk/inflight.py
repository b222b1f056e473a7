"""The executions a process has in flight, so that an interruption can end their spans.

A worker cancelled or killed by a BaseException never marks its state done, and a signal stops
the process between two bytecodes: both end the states in flight here, with outcome
``interrupted``. Ending is claimed once per execution, so whichever comes first ends the spans.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from exo_otel.sdk.execution import Execution

# Keyed by id(): executions are mutable dataclasses (not hashable). dict operations are atomic
# under the GIL, and a signal handler reads a copy, so no lock is held where a signal may land.
_executions: dict[int, Execution] = {}


def add(execution: Execution) -> None:
    _executions[id(execution)] = execution


def discard(execution: Execution) -> None:
    _executions.pop(id(execution), None)


def snapshot() -> list[Execution]:
    """The executions in flight now (a copy)."""
    return list(_executions.copy().values())


class EndClaim:
    """A once-only flag, safe across threads and from a signal handler (it never blocks)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def claim(self) -> bool:
        """True for the first caller only."""
        return self._lock.acquire(blocking=False)


class SignalReceived(BaseException):
    """Stands for the signal that interrupted an execution; its ``error.type`` is the signal's name."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(f"interrupted by {signal_name}")
        self._exo_otel_error_type = signal_name
