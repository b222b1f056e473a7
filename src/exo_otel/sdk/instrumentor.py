"""`ExosphereInstrumentor`: the patch table, and installing and removing it."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import warnings
from collections.abc import Collection
from typing import Any, Final

from opentelemetry import metrics, trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.sampling import Sampler

from exo_otel.core import attributes as attr
from exo_otel.core.metrics import ExosphereMetrics
from exo_otel.core.patches import Patch
from exo_otel.core.providers import install_run_id_generator, remove_run_id_generator
from exo_otel.core.spans import guard
from exo_otel.sdk import inflight
from exo_otel.sdk.config import PlacementMode, Settings
from exo_otel.sdk.cpu_time import make_executor_wrapper
from exo_otel.sdk.logs import install_log_correlation, remove_log_correlation
from exo_otel.sdk.package import _instruments
from exo_otel.sdk.request_headers import make_request_headers_wrapper, wrap_requests_on_first_headers
from exo_otel.sdk.runtime import (
    make_errored_wrapper,
    make_executed_wrapper,
    make_node_wrapper,
    make_poll_wrapper,
    make_pruned_wrapper,
    make_requeued_wrapper,
    make_runtime_init_wrapper,
    make_start_wrapper,
)
from exo_otel.sdk.secrets import make_secrets_wrapper
from exo_otel.sdk.shutdown import SignalFlush
from exo_otel.sdk.telemetry import Telemetry
from exo_otel.sdk.trigger import make_get_graph_wrapper, make_trigger_wrapper, make_upsert_graph_wrapper
from exo_otel.sdk.worker import make_worker_wrapper
from exo_otel.version import __version__

_logger = logging.getLogger(__name__)

SCHEMA_URL: Final = attr.SCHEMA_URL
SUPPORTED_SDK: Final = f"the supported exospherehost and aiohttp ({', '.join(_instruments)})"

# What each row's wrapper reads of its call: the rows of a 0.0.x SDK (some private methods) and of
# aiohttp and asyncio; a target missing or taking other parameters is logged and left unwrapped, and
# the drift test fails loudly. _instrument wraps the rows that apply (`patches_for`) and _uninstrument
# unwraps exactly the rows it wrapped, so the two cannot drift.
PATCHES: Final[tuple[Patch[Telemetry], ...]] = (
    Patch(
        "exospherehost.statemanager",
        "StateManager.trigger",
        make_trigger_wrapper,
        ("self", "graph_name", "inputs", "store", "start_delay"),
    ),
    Patch("exospherehost.statemanager", "StateManager.upsert_graph", make_upsert_graph_wrapper,
          ("self", "graph_name")),
    Patch("exospherehost.statemanager", "StateManager.get_graph", make_get_graph_wrapper,
          ("self", "graph_name")),
    # The runtime has no hook for "a worker took a state": __init__ swaps in a traced queue.
    Patch("exospherehost.runtime", "Runtime.__init__", make_runtime_init_wrapper, ("self",)),
    Patch("exospherehost.runtime", "Runtime._enqueue_call", make_poll_wrapper, ("self",)),
    Patch("exospherehost.runtime", "Runtime._start", make_start_wrapper, ("self",)),
    # Called once per state: plain function wrappers (`Patch.plain`).
    Patch("exospherehost.runtime", "Runtime._notify_executed", make_executed_wrapper,
          ("self", "state_id", "outputs"), plain=True),
    Patch("exospherehost.runtime", "Runtime._notify_errored", make_errored_wrapper,
          ("self", "state_id", "error"), plain=True),
    Patch("exospherehost.signals", "PruneSignal.send", make_pruned_wrapper, ("self", "endpoint", "key")),
    Patch("exospherehost.signals", "ReQueueAfterSignal.send", make_requeued_wrapper,
          ("self", "endpoint", "key")),
    # A worker stopped by cancellation or a BaseException still ends its state's spans.
    Patch("exospherehost.runtime", "Runtime._worker", make_worker_wrapper, ("self", "idx")),
    # The secrets a node receives, so that no telemetry shows them.
    Patch("exospherehost.runtime", "Runtime._get_secrets", make_secrets_wrapper, ("self", "state_id")),
)

# The SDK builds its requests inside: the trigger gets the caller's W3C headers here, a state's report
# its execution's CPU time. Wrapped on first need (`request_headers.wrap_requests_on_first_headers`):
# where no call adds headers (a runtime with CPU time off), no aiohttp request pays for a wrapper.
REQUEST_PATCH: Final[Patch[Telemetry]] = Patch(
    "aiohttp.client", "ClientSession._request", make_request_headers_wrapper, ("self", "method", "str_or_url")
)

# Only with CPU time on (`Settings.cpu_time`): the node's own code, metered for the execution's CPU time
# (docs/trace-model.md, "CPU time"), with what it hands to the event loop's executor threads
# (asyncio.to_thread among them). With it off, neither the node call nor the event loop is wrapped.
CPU_TIME_PATCHES: Final[tuple[Patch[Telemetry], ...]] = (
    Patch("exospherehost.node.BaseNode", "BaseNode._execute", make_node_wrapper,
          ("self", "inputs", "secrets")),
    Patch("asyncio.base_events", "BaseEventLoop.run_in_executor", make_executor_wrapper,
          ("self", "executor", "func")),
)


def patches_for(settings: Settings) -> tuple[Patch[Telemetry], ...]:
    """The rows the instrumentor wraps with these settings."""
    return PATCHES + CPU_TIME_PATCHES if settings.cpu_time else PATCHES


class ExosphereInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Traces Exosphere graph runs: one trace per run, its id derived from the run id.

    Use ``ExosphereInstrumentor().instrument()``; the ``opentelemetry-instrument`` launcher loads it
    by itself (entry point ``exospherehost``).
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def instrument(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        placement: PlacementMode | str | None = None,
        capture_io: bool | None = None,
        io_max_length: int | None = None,
        run_api_budget: float | None = None,
        placement_wait_ms: int | None = None,
        cpu_time: bool | None = None,
        skip_dep_check: bool = False,
        raise_exception_on_conflict: bool = False,
        run_association: PlacementMode | str | None = None,
    ) -> None:
        """Install the instrumentation (a second call while installed does nothing).

        Args:
            tracer_provider: where spans go; the global provider when None.
            meter_provider: where metrics go; the global provider when None.
            placement: where a runtime looks for a state's run, to place the state in the run's trace
                (`exo_otel.sdk.config.PlacementMode`); the ``OTEL_PYTHON_EXOSPHERE_PLACEMENT`` variable
                when None, else ``auto``.
            capture_io: record node inputs and outputs (truncated); default off.
            io_max_length: characters kept of a recorded input or output.
            run_api_budget: run API calls per second a runtime may spend finding states' runs
                (``OTEL_PYTHON_EXOSPHERE_RUN_API_BUDGET``; default 50; 0 turns the run APIs off).
            placement_wait_ms: how long a worker may wait for its state's run to be found
                (``OTEL_PYTHON_EXOSPHERE_PLACEMENT_WAIT_MS``; default 250).
            cpu_time: measure each execution's CPU time (``OTEL_PYTHON_EXOSPHERE_CPU_TIME``;
                default off).
            skip_dep_check: do not check the installed exospherehost version.
            raise_exception_on_conflict: raise instead of logging on a version conflict.
            run_association: the old name of ``placement`` (deprecated; ``placement`` wins).

        Raises:
            ValueError: an explicit argument has a bad value.
        """
        # Resolve here so that a bad explicit argument raises at the caller.
        if run_association is not None:
            warnings.warn(
                "instrument(run_association=...) is deprecated: use placement=...",
                DeprecationWarning,
                stacklevel=2,
            )
            placement = run_association if placement is None else placement
        settings = Settings.resolve(
            placement, capture_io, io_max_length, run_api_budget, placement_wait_ms, cpu_time
        )
        super().instrument(
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            settings=settings,
            skip_dep_check=skip_dep_check,
            raise_exception_on_conflict=raise_exception_on_conflict,
        )

    def _instrument(self, **kwargs: Any) -> None:
        self._patched = False
        if importlib.util.find_spec("exospherehost") is None:
            # The launcher loads this entry point in a state manager too (see `instruments-any`).
            _logger.debug("exo_otel: exospherehost is not installed; the SDK side is not loaded")
            return
        tracer_provider = kwargs.get("tracer_provider") or trace.get_tracer_provider()
        meter_provider = kwargs.get("meter_provider") or metrics.get_meter_provider()
        settings = kwargs.get("settings")
        if not isinstance(settings, Settings):
            # Called by the launcher through BaseInstrumentor.instrument(**kwargs).
            settings = Settings.resolve()
        _warn_if_spans_go_nowhere(tracer_provider)
        self._installed_generator = install_run_id_generator(tracer_provider)
        tracer = trace.get_tracer(__name__, __version__, tracer_provider, schema_url=SCHEMA_URL)
        meter = metrics.get_meter(__name__, __version__, meter_provider, schema_url=SCHEMA_URL)
        sampler = tracer_provider.sampler if isinstance(tracer_provider, SdkTracerProvider) else None
        telemetry = Telemetry(
            tracer=tracer,
            metrics=ExosphereMetrics.create(meter, inflight=[inflight.observe]),
            settings=settings,
            sampler=sampler if isinstance(sampler, Sampler) else None,
        )
        self._telemetry = telemetry
        install_log_correlation()
        self._installed_patches: tuple[Patch[Telemetry], ...] = ()
        for patch in patches_for(settings):
            if _wrap(patch, telemetry):
                self._installed_patches += (patch,)
        wrap_requests_on_first_headers(lambda: self._wrap_on_demand(REQUEST_PATCH, telemetry))
        self._signal_flush = SignalFlush(tracer_provider, meter_provider)
        with guard("installing the signal handlers"):
            self._signal_flush.install()
        self._patched = True

    def _wrap_on_demand(self, patch: Patch[Telemetry], telemetry: Telemetry) -> None:
        if self._telemetry is telemetry and telemetry.enabled and _wrap(patch, telemetry):
            self._installed_patches += (patch,)

    def _uninstrument(self, **kwargs: Any) -> None:
        telemetry = getattr(self, "_telemetry", None)
        if telemetry is not None:
            telemetry.enabled = False
        if not getattr(self, "_patched", False):
            return
        wrap_requests_on_first_headers(None)
        for patch in getattr(self, "_installed_patches", ()):
            with guard(f"unwrapping {patch.target}"):
                patch.unwrap()
        self._installed_patches = ()
        remove_log_correlation()
        signal_flush = getattr(self, "_signal_flush", None)
        if signal_flush is not None:
            with guard("restoring the signal handlers"):
                signal_flush.uninstall()
        remove_run_id_generator(getattr(self, "_installed_generator", None))
        self._installed_generator = None


def _wrap(patch: Patch[Telemetry], telemetry: Telemetry) -> bool:
    """Wrap one row's target (imported now); one of another shape is logged and left alone."""
    try:
        module = importlib.import_module(patch.module)
    except Exception:
        _logger.warning("exo_otel: importing %s failed", patch.module, exc_info=True)
        return False
    return patch.apply(module, telemetry, SUPPORTED_SDK)


_LAUNCHER_MODULE: Final = "opentelemetry.instrumentation.auto_instrumentation"
_warned_spans_go_nowhere = False


def _warn_if_spans_go_nowhere(provider: object) -> None:
    """Under the launcher with no SDK tracer provider set (no distro), no span is exported: say so once."""
    global _warned_spans_go_nowhere
    unset = isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)
    if _warned_spans_go_nowhere or not unset or _LAUNCHER_MODULE not in sys.modules:
        return
    _warned_spans_go_nowhere = True
    _logger.warning(
        "exo_otel: no OpenTelemetry SDK tracer provider is configured, so no Exosphere span will be "
        "exported. Install opentelemetry-distro (pip install opentelemetry-distro), which makes "
        "opentelemetry-instrument configure one from the OTEL_* variables, or set one in your program."
    )

