"""Where a runtime put each state's node span, so that attempts agree and links only name emitted spans.

docs/trace-model.md, section "Traces never dangle": a state placed in no run has a trace of its own
(its id from the state id); every attempt of a state this runtime executes again (a requeue) keeps
the trace the first attempt chose, so an earlier attempt's execute span never names a node span
emitted elsewhere; a link to an upstream state's node span is made only where this runtime knows
that span is emitted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Final

from opentelemetry.trace import SpanContext

from exo_otel.core.lru import LruCache
from exo_otel.core.metrics import ExosphereMetrics
from exo_otel.sdk.state_context import RunInfo

_logger = logging.getLogger("exo_otel")


@dataclass(frozen=True)
class Placed:
    """A state's node span as this runtime emitted it (or will, at the state's final outcome)."""

    run: RunInfo | None
    """None: the state's own trace."""
    context: SpanContext


class PlacementMemory:
    """The node spans this runtime started, by state id; the least recently used are forgotten first."""

    def __init__(self, max_states: int = 20_000) -> None:
        self._placed: LruCache[str, Placed] = LruCache(max(1, max_states))

    def remember(self, state_id: str, run: RunInfo | None, context: SpanContext) -> None:
        if not context.is_valid:
            return
        self._placed.put(state_id, Placed(run, context))

    def get(self, state_id: str | None) -> Placed | None:
        if state_id is None:
            return None
        return self._placed.get(state_id)


UNPLACED_ADVICE: Final = (
    "their run was not found through the state manager's run APIs in time (slow, failing, or more "
    "states than the budget of OTEL_PYTHON_EXOSPHERE_RUN_API_BUDGET calls per second can place), so "
    "each has a trace of its own. To place every state without the run APIs, load exo_otel's state manager "
    "side into the state manager: the `exosphere_state_manager` instrumentor of opentelemetry-instrument, "
    "or exo_otel.StateManagerInstrumentor().instrument() before the app is imported"
)


class UnplacedReporter:
    """Counts states placed in no run (``exosphere.runtime.unplaced``) and warns at most once per interval."""

    def __init__(self, metrics: ExosphereMetrics, interval_s: float = 60.0) -> None:
        self._metrics = metrics
        self._interval = interval_s
        self._last_warning = float("-inf")
        self._since_warning = 0
        self.total = 0

    def report(self, attributes: dict[str, str]) -> None:
        self.total += 1
        self._since_warning += 1
        self._metrics.unplaced.add(1, attributes)
        now = time.monotonic()
        if now - self._last_warning >= self._interval:
            _logger.warning(
                "exo_otel: %d state(s) of namespace %s ran in no run's trace in the last %s: %s.",
                self._since_warning,
                attributes.get("exosphere.namespace", "?"),
                "moments" if self._last_warning == float("-inf") else f"{now - self._last_warning:.0f} s",
                UNPLACED_ADVICE,
            )
            self._last_warning = now
            self._since_warning = 0
