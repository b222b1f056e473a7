"""`StateManagerInstrumentor`: loads the state manager side into the unmodified upstream state manager.

Post-import hooks patch each module of the patch table when it is imported (or at once when it is
imported already), so the instrumentor is harmless in any other process. The app is not an
installed distribution: instead of a dependency check, every target is checked (it exists, and
takes the parameters the wrapper expects) and a mismatch is logged, naming the supported version.
"""

from __future__ import annotations

import functools
import importlib
import logging
import sys
from collections.abc import Collection
from types import ModuleType
from typing import Any, Final

import wrapt
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from exo_otel.core import attributes as attr
from exo_otel.core.patches import Patch
from exo_otel.core.providers import flush_spans, install_run_id_generator, remove_run_id_generator
from exo_otel.core.spans import guard
from exo_otel.server.mongo_store import MongoRunStore
from exo_otel.server.sampling import install_stored_decision
from exo_otel.server.side import ServerSide
from exo_otel.server.spans import ServerMetrics
from exo_otel.server.sweeper import retention_seconds
from exo_otel.server.upstream import (
    make_enqueue_wrapper,
    make_executed_wrapper,
    make_find_state_wrapper,
    make_manual_retry_wrapper,
    make_next_states_wrapper,
    make_request_wrapper,
    make_requeue_wrapper,
    make_run_insert_wrapper,
    make_settled_wrapper,
    make_trigger_wrapper,
)
from exo_otel.version import __version__

_logger = logging.getLogger(__name__)

SCHEMA_URL: Final = attr.SCHEMA_URL
STATE_MODULE: Final = "app.models.db.state"
SUPPORTED_VERSION: Final = "exospherehost state-manager 0.0.3"

# What the routes acting on one state (errored, prune, requeue, manual retry) call their controller with.
STATE_ROUTE_PARAMETERS: Final = ("namespace_name", "state_id", "body", "x_exosphere_request_id")

# instrument patches every row as its module is imported, uninstrument unpatches every row it patched;
# the drift test checks every row against the real upstream server.
PATCHES: Final[tuple[Patch[ServerSide], ...]] = (
    Patch(
        "app.middlewares.request_id_middleware",
        "RequestIdMiddleware.dispatch",
        make_request_wrapper,
        ("self", "request", "call_next"),
    ),
    Patch("app.models.db.run", "Run.insert", make_run_insert_wrapper, ("self",)),
    Patch(
        "app.routes",
        "trigger_graph",
        make_trigger_wrapper,
        ("namespace_name", "graph_name", "body", "x_exosphere_request_id"),
    ),
    Patch(
        "app.tasks.trigger_cron",
        "trigger_graph",
        make_trigger_wrapper,
        ("namespace_name", "graph_name", "body", "x_exosphere_request_id"),
    ),
    Patch(
        "app.controller.enqueue_states", "find_state", make_find_state_wrapper, ("namespace_name", "nodes")
    ),
    Patch(
        "app.routes",
        "enqueue_states",
        make_enqueue_wrapper,
        ("namespace_name", "body", "x_exosphere_request_id"),
    ),
    Patch(
        "app.controller.executed_state",
        "create_next_states",
        make_next_states_wrapper,
        ("state_ids", "identifier", "namespace", "graph_name", "parents_ids"),
    ),
    Patch(
        "app.routes",
        "executed_state",
        make_executed_wrapper,
        ("namespace_name", "state_id", "body", "x_exosphere_request_id", "background_tasks"),
    ),
    Patch(
        "app.routes",
        "errored_state",
        make_settled_wrapper,
        STATE_ROUTE_PARAMETERS,
    ),
    Patch(
        "app.routes",
        "prune_signal",
        make_settled_wrapper,
        STATE_ROUTE_PARAMETERS,
    ),
    Patch(
        "app.routes",
        "re_queue_after_signal",
        make_requeue_wrapper,
        STATE_ROUTE_PARAMETERS,
    ),
    Patch(
        "app.routes",
        "manual_retry_state",
        make_manual_retry_wrapper,
        STATE_ROUTE_PARAMETERS,
    ),
)


def check_targets() -> list[str]:
    """Problems with every patch target whose module is imported (the drift test calls this)."""
    problems = []
    for patch in PATCHES:
        module = sys.modules.get(patch.module)
        if module is None:
            problems.append(f"{patch.module} is not imported")
            continue
        problem = patch.problem(module)
        if problem is not None:
            problems.append(problem)
    return problems


class StateManagerInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """The state manager side of exo_otel, for the upstream Exosphere state manager (0.0.3).

    Use ``StateManagerInstrumentor().instrument()`` before or after the app is imported; the
    ``opentelemetry-instrument`` launcher loads it by itself (entry point ``exosphere_state_manager``).
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        # The app is not a distribution: its modules are checked when they are imported.
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        tracer_provider = kwargs.get("tracer_provider") or trace.get_tracer_provider()
        meter_provider = kwargs.get("meter_provider") or metrics.get_meter_provider()
        self._installed_generator = install_run_id_generator(tracer_provider)
        tracer = trace.get_tracer(__name__, __version__, tracer_provider, schema_url=SCHEMA_URL)
        sampler = install_stored_decision(tracer)
        meter = metrics.get_meter(__name__, __version__, meter_provider, schema_url=SCHEMA_URL)
        store = MongoRunStore(lambda: importlib.import_module(STATE_MODULE).State.get_pymongo_collection())
        retention = retention_seconds(kwargs.get("run_retention_seconds"))
        given = kwargs.get("tracer_provider")  # else the global one, as it is when a sweep flushes
        side = ServerSide(
            tracer, store, sampler, ServerMetrics.create(meter), retention_seconds=retention,
            flush=functools.partial(flush_spans, given),
        )
        self._side: ServerSide | None = side
        self._patched: list[Patch[ServerSide]] = []
        for module_name in dict.fromkeys(patch.module for patch in PATCHES):
            wrapt.register_post_import_hook(self._hook_for(side, module_name), module_name)

    def _hook_for(self, side: ServerSide, module_name: str) -> Any:
        def patch_module(module: ModuleType) -> None:
            if getattr(self, "_side", None) is not side or not side.enabled:
                return  # uninstrumented (or instrumented again) since the hook was registered
            for patch in PATCHES:
                if patch.module == module_name:
                    self._apply(side, patch, module)

        return patch_module

    def _apply(self, side: ServerSide, patch: Patch[ServerSide], module: ModuleType) -> None:
        if patch.apply(module, side, SUPPORTED_VERSION):
            self._patched.append(patch)

    def _uninstrument(self, **kwargs: Any) -> None:
        side = getattr(self, "_side", None)
        if side is not None:
            side.enabled = False
            side.sweeper.stop()
        for patch in getattr(self, "_patched", []):
            with guard(f"unpatching {patch.target}"):
                patch.unwrap()
        self._patched = []
        self._side = None
        remove_run_id_generator(getattr(self, "_installed_generator", None))
        self._installed_generator = None


def instrument() -> None:
    """Load the state manager side with the global providers.

    For ``UPSTREAM_SM_PRELOAD=exo_otel.server.instrumentor:instrument``.
    """
    StateManagerInstrumentor().instrument()
