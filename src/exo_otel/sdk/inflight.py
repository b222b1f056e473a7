"""The executions a process has in flight, so that an interruption can end their spans.

A worker cancelled or killed by a BaseException never marks its state done, and a signal stops
the process between two bytecodes: both end the states in flight here, with outcome
``interrupted``. Ending is claimed once per execution (taking it out of the registry), so whichever
comes first ends the spans.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from opentelemetry.metrics import CallbackOptions, Observation

from exo_otel.core.lru import LruCache

if TYPE_CHECKING:
    from exo_otel.sdk.execution import Execution

# Keyed by id(): executions are mutable dataclasses (not hashable). dict operations are atomic
# under the GIL, and a signal handler reads a copy, so no lock is held where a signal may land.
_executions: dict[int, Execution] = {}


def add(execution: Execution) -> None:
    _executions[id(execution)] = execution


def claim(execution: Execution) -> bool:
    """Take the execution out of the registry: true for the first caller only, so its spans end once.

    Safe across threads and from a signal handler: one dict operation, atomic under the GIL.
    """
    return _executions.pop(id(execution), None) is not None


def snapshot() -> list[Execution]:
    """The executions in flight now (a copy)."""
    return list(_executions.copy().values())


# Every metric attribute set that has had a state in flight: observed at 0 when none is, so a
# series drops to 0 rather than vanishing. Few sets (namespaces x graphs x nodes); bounded anyway.
_known_sets: LruCache[tuple[tuple[str, str], ...], dict[str, str]] = LruCache(4096)


def note_attribute_set(attributes: dict[str, str]) -> None:
    """A state with these metric attributes may be in flight from now on (once per distinct set)."""
    _known_sets.put(tuple(attributes.items()), attributes)


def observe(options: CallbackOptions) -> Iterator[Observation]:
    """``exosphere.runtime.inflight``: the states in flight now, by metric attribute set."""
    counts = dict.fromkeys((key for key, _attributes in _known_sets.snapshot()), 0)
    for execution in snapshot():
        key = tuple(execution.metric_attributes.items())
        counts[key] = counts.get(key, 0) + 1
    for key, count in counts.items():
        yield Observation(count, dict(key))


class SignalReceived(BaseException):
    """Stands for the signal that interrupted an execution; its ``error.type`` is the signal's name."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(f"interrupted by {signal_name}")
        self._exo_otel_error_type = signal_name
