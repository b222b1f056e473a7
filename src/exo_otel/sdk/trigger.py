"""The trigger side: `StateManager.trigger` as the run's root span, and client spans for graph calls."""

from __future__ import annotations

import time
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.trace import Link, SpanKind

from exo_otel.core import attributes as attr
from exo_otel.core.ids import run_span_id, trace_id_for_run
from exo_otel.core.sanitize import clean_text
from exo_otel.core.spans import end_span, guard, record_failure, start_span
from exo_otel.core.wrapping import AsyncMethod, Wrapper, call_argument
from exo_otel.sdk.request_headers import add_headers, stop_adding
from exo_otel.sdk.telemetry import Telemetry


def _namespace(instance: Any) -> str:
    return str(getattr(instance, "_namespace", "") or "")


def make_trigger_wrapper(telemetry: Telemetry) -> Wrapper:
    """Wrap ``StateManager.trigger(graph_name, inputs=None, store=None, start_delay=0)``."""

    async def traced_trigger(
        wrapped: AsyncMethod, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if not is_instrumentation_enabled():
            return await wrapped(*args, **kwargs)
        # The run id, and so the trace id, exists only once the server answers: take the start
        # time now and create the span afterwards, backdated to it.
        start_ns = time.time_ns()
        caller = trace.get_current_span()
        # The caller's W3C context (its span, its baggage) goes to the server on the trigger request.
        outgoing: dict[str, str] = {}
        with guard("taking the caller's context"):
            propagate.inject(outgoing)
        token = add_headers(outgoing)
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as exc:
            with guard("recording a failed trigger"):
                _span_where_the_caller_is(
                    telemetry, _trigger_attributes(instance, args, kwargs), start_ns, exc
                )
            raise
        finally:
            stop_adding(token)
        with guard("recording the trigger span"):
            _run_root_span(telemetry, _trigger_attributes(instance, args, kwargs), start_ns, caller, result)
        return result

    return traced_trigger


def _trigger_attributes(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    graph_name = str(call_argument(args, kwargs, 0, "graph_name", ""))
    start_delay = call_argument(args, kwargs, 3, "start_delay", 0)
    attributes: dict[str, Any] = {attr.NAMESPACE: _namespace(instance), attr.GRAPH_NAME: graph_name}
    attributes.update(attr.trigger_messaging(graph_name))
    if isinstance(start_delay, int | float):
        attributes[attr.TRIGGER_START_DELAY_MS] = int(start_delay)
    return attributes


def _run_root_span(
    telemetry: Telemetry, attributes: dict[str, Any], start_ns: int, caller: trace.Span, result: Any
) -> None:
    metric_attributes = {k: v for k, v in attributes.items() if k in (attr.NAMESPACE, attr.GRAPH_NAME)}
    telemetry.metrics.triggers.add(1, metric_attributes)
    run_id = result.get("run_id") if isinstance(result, dict) else None
    if not isinstance(run_id, str) or not run_id:
        # An answer without a run id cannot root a run trace.
        _span_where_the_caller_is(telemetry, attributes, start_ns, None)
        return
    attributes[attr.RUN_ID] = run_id
    caller_context = caller.get_span_context()
    server_root = _server_run_root(result, run_id)
    # Without a server-owned root, an empty context makes the span the root whatever is current:
    # the run's trace never nests inside the caller's, so its trace id is always the run id's.
    span = start_span(
        telemetry.tracer,
        f"trigger {attributes[attr.GRAPH_NAME]}",
        kind=SpanKind.PRODUCER,
        context=server_root if server_root is not None else Context(),
        trace_id=None if server_root is not None else trace_id_for_run(run_id),
        span_id=None if server_root is not None else run_span_id(run_id),
        start_time=start_ns,
        attributes=attributes,
        links=[Link(caller_context)] if caller_context.is_valid else [],
    )
    if caller.is_recording():
        caller.add_link(span.get_span_context(), {attr.RUN_ID: clean_text(run_id)})
    end_span(span)


def _server_run_root(result: dict[str, Any], run_id: str) -> Context | None:
    """The run root the state manager side owns, from the trigger answer's ``traceparent``; else None."""
    traceparent = result.get("traceparent")
    if not isinstance(traceparent, str):
        return None
    extracted = propagate.extract({"traceparent": traceparent}, context=Context())
    root = trace.get_current_span(extracted).get_span_context()
    if not root.is_valid or root.trace_id != trace_id_for_run(run_id):
        return None
    return extracted


def _span_where_the_caller_is(
    telemetry: Telemetry, attributes: dict[str, Any], start_ns: int, exc: BaseException | None
) -> None:
    """A trigger span with no run to root, in the caller's context; ERROR when ``exc`` is given."""
    span = start_span(
        telemetry.tracer,
        f"trigger {attributes[attr.GRAPH_NAME]}",
        kind=SpanKind.PRODUCER,
        start_time=start_ns,
        attributes=attributes,
    )
    if exc is not None:
        record_failure(span, exc)
    end_span(span)


def make_graph_call_wrapper(telemetry: Telemetry, operation: str) -> Wrapper:
    """Wrap a ``StateManager`` graph call (``upsert_graph``, ``get_graph``) in a CLIENT span."""

    async def traced_graph_call(
        wrapped: AsyncMethod, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if not is_instrumentation_enabled():
            return await wrapped(*args, **kwargs)
        graph_name = str(call_argument(args, kwargs, 0, "graph_name", ""))
        span: trace.Span = trace.INVALID_SPAN
        with guard(f"starting the {operation} span"):
            span = start_span(
                telemetry.tracer,
                f"{operation} {graph_name}",
                kind=SpanKind.CLIENT,
                attributes={attr.NAMESPACE: _namespace(instance), attr.GRAPH_NAME: graph_name},
            )
        # Ended by end_span, not use_span: a span processor raising in on_end must not reach the caller.
        try:
            with trace.use_span(
                span, end_on_exit=False, record_exception=False, set_status_on_exception=False
            ):
                return await wrapped(*args, **kwargs)
        except BaseException as exc:
            with guard(f"recording a failed {operation}"):
                record_failure(span, exc)
            raise
        finally:
            end_span(span)

    return traced_graph_call


def make_upsert_graph_wrapper(telemetry: Telemetry) -> Wrapper:
    return make_graph_call_wrapper(telemetry, "upsert_graph")


def make_get_graph_wrapper(telemetry: Telemetry) -> Wrapper:
    return make_graph_call_wrapper(telemetry, "get_graph")
