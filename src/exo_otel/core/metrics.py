"""The metric instruments (docs/trace-model.md, section "Metrics"; user-facing: dashboards depend on them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from opentelemetry.metrics import CallbackT, Counter, Histogram, Meter, NoOpMeter, ObservableUpDownCounter

TRIGGER_COUNT: Final = "exosphere.trigger.count"
NODE_DURATION: Final = "exosphere.node.duration"
NODE_QUEUE_WAIT: Final = "exosphere.node.queue_wait"
NODE_EXECUTIONS: Final = "exosphere.node.executions"
NODE_CPU_TIME: Final = "exosphere.node.cpu_time"
RUN_CPU_TIME: Final = "exosphere.run.cpu_time"
# The state manager side's.
RUN_DURATION: Final = "exosphere.run.duration"
STATE_QUEUE_WAIT: Final = "exosphere.state.queue_wait"
RUNTIME_INFLIGHT: Final = "exosphere.runtime.inflight"
RUNTIME_POLL_DURATION: Final = "exosphere.runtime.poll.duration"
RUNTIME_UNPLACED: Final = "exosphere.runtime.unplaced"

# Seconds; node work spans milliseconds to minutes, far past the SDK's default buckets' low end.
_DURATION_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)

# Seconds of CPU: most node steps take well under a millisecond.
CPU_TIME_BUCKETS: Final = (0.0001, 0.00025, 0.0005, *_DURATION_BUCKETS)


@dataclass(frozen=True)
class ExosphereMetrics:
    """The instruments, made once per `instrument()` from the given or global meter provider."""

    triggers: Counter
    node_duration: Histogram
    queue_wait: Histogram
    executions: Counter
    node_cpu_time: Histogram
    inflight: ObservableUpDownCounter
    poll_duration: Histogram
    unplaced: Counter
    recording: bool = True
    """False when the meter is the API's no-op one: then the per-state records are not even made."""

    @classmethod
    def create(cls, meter: Meter, inflight: Sequence[CallbackT] = ()) -> ExosphereMetrics:
        """The instruments; ``inflight`` observes the states in flight (asked at each collection)."""
        return cls(
            triggers=meter.create_counter(TRIGGER_COUNT, unit="{run}", description="Graph runs triggered."),
            node_duration=meter.create_histogram(
                NODE_DURATION,
                unit="s",
                description="Duration of one node execution attempt, by outcome.",
                explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
            ),
            queue_wait=meter.create_histogram(
                NODE_QUEUE_WAIT,
                unit="s",
                description="Time from a state's creation to the start of its execution.",
                explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
            ),
            executions=meter.create_counter(
                NODE_EXECUTIONS, unit="{execution}", description="Node execution attempts, by outcome."
            ),
            node_cpu_time=meter.create_histogram(
                NODE_CPU_TIME,
                unit="s",
                description="CPU time one node execution attempt's own code used, by outcome.",
                explicit_bucket_boundaries_advisory=CPU_TIME_BUCKETS,
            ),
            # Observed, not counted: nothing to record per state.
            inflight=meter.create_observable_up_down_counter(
                RUNTIME_INFLIGHT,
                callbacks=list(inflight),
                unit="{state}",
                description="States a runtime is executing now.",
            ),
            poll_duration=meter.create_histogram(
                RUNTIME_POLL_DURATION,
                unit="s",
                description="Duration of one poll of the state manager's queue.",
                explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
            ),
            unplaced=meter.create_counter(
                RUNTIME_UNPLACED,
                unit="{state}",
                description="States a runtime executed without finding their run (traces of their own).",
            ),
            # Exactly the no-op meter (a proxy meter may get a real provider later: it records).
            recording=type(meter) is not NoOpMeter,
        )
