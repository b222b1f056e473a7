"""Settings of the instrumentation: environment variables, and the frozen settings read in _instrument."""

from __future__ import annotations

import enum
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Final

_logger = logging.getLogger(__name__)

OTEL_PYTHON_EXOSPHERE_PLACEMENT: Final = "OTEL_PYTHON_EXOSPHERE_PLACEMENT"
"""How a runtime places a state in its run's trace (finds the state's run): ``auto`` (default),
``payload``, ``run_api``, ``none``.

``auto`` uses the run context in the enqueue answer when the state manager sends it and asks the
run APIs otherwise; ``payload`` only the former; ``run_api`` only the latter; ``none`` gives every
state a trace of its own.
"""

OTEL_PYTHON_EXOSPHERE_RUN_ASSOCIATION: Final = "OTEL_PYTHON_EXOSPHERE_RUN_ASSOCIATION"
"""The old name of `OTEL_PYTHON_EXOSPHERE_PLACEMENT`: still read when the new one is unset, with a
deprecation warning."""

OTEL_PYTHON_EXOSPHERE_CAPTURE_IO: Final = "OTEL_PYTHON_EXOSPHERE_CAPTURE_IO"
"""``true`` records node inputs and outputs on execute spans, truncated. Default ``false``."""

OTEL_PYTHON_EXOSPHERE_IO_MAX_LENGTH: Final = "OTEL_PYTHON_EXOSPHERE_IO_MAX_LENGTH"
"""Characters kept of a recorded input or output value. Default 256."""

OTEL_PYTHON_EXOSPHERE_RUN_API_BUDGET: Final = "OTEL_PYTHON_EXOSPHERE_RUN_API_BUDGET"
"""Run API calls per second a runtime may make to find states' runs (``run_api``/``auto``). Default 50.

Spent in a background task, never in a poll; ``0`` turns the run APIs off (states without a run
context in the payload get traces of their own).
"""

OTEL_PYTHON_EXOSPHERE_PLACEMENT_WAIT_MS: Final = "OTEL_PYTHON_EXOSPHERE_PLACEMENT_WAIT_MS"
"""Milliseconds a worker may wait, when it takes a state whose run is not known yet, for the
run API placement to find it. Default 250; ``0`` never waits."""

OTEL_PYTHON_EXOSPHERE_CPU_TIME: Final = "OTEL_PYTHON_EXOSPHERE_CPU_TIME"
"""``true`` measures each execution's CPU time (``exosphere.execution.cpu_time``, the
``exosphere.node.cpu_time`` histogram, and the run sums the state manager side makes). Default ``false``:
it costs 9-13% of exo_otel's added instructions per execution with spans only, 16-20% with metrics
(``benchmarks/exact_cost.py --no-cpu-time``), more than the 5% that would make it a default."""

DEFAULT_IO_MAX_LENGTH: Final = 256
DEFAULT_RUN_API_BUDGET: Final = 50.0
DEFAULT_PLACEMENT_WAIT_MS: Final = 250


class PlacementMode(enum.StrEnum):
    """Where a runtime looks for a state's run, to place the state in the run's trace."""

    AUTO = "auto"
    PAYLOAD = "payload"
    RUN_API = "run_api"
    NONE = "none"

    @property
    def uses_payload(self) -> bool:
        return self is PlacementMode.AUTO or self is PlacementMode.PAYLOAD  # identity: no string compare

    @property
    def uses_run_api(self) -> bool:
        return self is PlacementMode.AUTO or self is PlacementMode.RUN_API


@dataclass(frozen=True)
class Settings:
    """What `ExosphereInstrumentor.instrument` was told, with the environment filling the gaps."""

    placement: PlacementMode = PlacementMode.AUTO
    capture_io: bool = False
    io_max_length: int = DEFAULT_IO_MAX_LENGTH
    run_api_budget: float = DEFAULT_RUN_API_BUDGET
    placement_wait_ms: int = DEFAULT_PLACEMENT_WAIT_MS
    cpu_time: bool = False

    @classmethod
    def resolve(
        cls,
        placement: PlacementMode | str | None = None,
        capture_io: bool | None = None,
        io_max_length: int | None = None,
        run_api_budget: float | None = None,
        placement_wait_ms: int | None = None,
        cpu_time: bool | None = None,
    ) -> Settings:
        """Explicit arguments win; the environment fills what is None; bad values raise ValueError."""
        mode = _env_placement() if placement is None else PlacementMode(str(placement).strip().lower())
        if capture_io is None:
            capture_io = _env_bool(OTEL_PYTHON_EXOSPHERE_CAPTURE_IO, default=False)
        if io_max_length is None:
            io_max_length = _env_int(OTEL_PYTHON_EXOSPHERE_IO_MAX_LENGTH, DEFAULT_IO_MAX_LENGTH)
        if io_max_length < 1:
            raise ValueError(f"io_max_length must be at least 1, got {io_max_length}")
        if run_api_budget is None:
            run_api_budget = _env_float(OTEL_PYTHON_EXOSPHERE_RUN_API_BUDGET, DEFAULT_RUN_API_BUDGET)
        elif not 0 <= run_api_budget < float("inf"):
            raise ValueError(f"run_api_budget must be a finite number >= 0, got {run_api_budget}")
        if placement_wait_ms is None:
            placement_wait_ms = _env_int(OTEL_PYTHON_EXOSPHERE_PLACEMENT_WAIT_MS, DEFAULT_PLACEMENT_WAIT_MS)
            if placement_wait_ms < 0:
                _logger.warning("%s must be >= 0; using %d", OTEL_PYTHON_EXOSPHERE_PLACEMENT_WAIT_MS,
                                DEFAULT_PLACEMENT_WAIT_MS)
                placement_wait_ms = DEFAULT_PLACEMENT_WAIT_MS
        elif placement_wait_ms < 0:
            raise ValueError(f"placement_wait_ms must be >= 0, got {placement_wait_ms}")
        if cpu_time is None:
            cpu_time = _env_bool(OTEL_PYTHON_EXOSPHERE_CPU_TIME, default=False)
        return cls(
            placement=mode,
            capture_io=capture_io,
            io_max_length=io_max_length,
            run_api_budget=float(run_api_budget),
            placement_wait_ms=int(placement_wait_ms),
            cpu_time=bool(cpu_time),
        )


def _env_placement() -> PlacementMode:
    # A bad environment value must not abort the launcher's start-up: warn and use the default.
    name = OTEL_PYTHON_EXOSPHERE_PLACEMENT
    raw = os.environ.get(name, "").strip().lower()
    if not raw and os.environ.get(OTEL_PYTHON_EXOSPHERE_RUN_ASSOCIATION, "").strip():
        name = OTEL_PYTHON_EXOSPHERE_RUN_ASSOCIATION
        raw = os.environ[name].strip().lower()
        _logger.warning("%s is deprecated: set %s instead", name, OTEL_PYTHON_EXOSPHERE_PLACEMENT)
    if not raw:
        return PlacementMode.AUTO
    try:
        return PlacementMode(raw)
    except ValueError:
        choices = ", ".join(member.value for member in PlacementMode)
        _logger.warning("%s=%r is not one of %s; using auto", name, raw, choices)
        return PlacementMode.AUTO


def __getattr__(name: str) -> object:
    # The enum's old name, kept importable for code written against it.
    if name == "RunAssociation":
        warnings.warn(
            "exo_otel.sdk.config.RunAssociation is deprecated: use PlacementMode",
            DeprecationWarning,
            stacklevel=2,
        )
        return PlacementMode
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    _logger.warning("%s=%r is not a boolean; using %s", name, raw, default)
    return default


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        _logger.warning("%s=%r is not an integer; using %d", name, raw, default)
        return default


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        _logger.warning("%s=%r is not a number >= 0; using %s", name, raw, default)
        return default
    return value
