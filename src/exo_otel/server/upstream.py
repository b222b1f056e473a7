"""The upstream state manager adapter: wrappers of the unmodified app's functions (the patch table,
in `exo_otel.server.instrumentor`, names where each is LOOKED UP at call time: ``app.routes``
imports the controllers by name, so it is patched there, before or after the app is imported). Every
wrapper calls the upstream function exactly as it was called and returns what it returned, except
that the enqueue and trigger answers gain the fields of docs/trace-model.md, section "The carrier";
a failure of ours is logged
and the upstream answer goes out unchanged.
"""

from __future__ import annotations

import contextvars
import importlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from exo_otel.core.spans import guard
from exo_otel.core.wrapping import AsyncMethod, call_argument
from exo_otel.server.context import RunContext
from exo_otel.server.records import epoch_ns
from exo_otel.server.side import ServerSide, TakenState

_logger = logging.getLogger(__name__)

# The trigger request's headers, for the trigger controller (set around each request).
_request_headers: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "exo_otel_request_headers", default=None
)
# The trigger in progress in this task: the Run insert hook makes its context.
_trigger: contextvars.ContextVar[_Trigger | None] = contextvars.ContextVar("exo_otel_trigger", default=None)
# The states one enqueue call took, by state id (find_state runs in gathered tasks: a shared dict).
_taken: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("exo_otel_taken", default=None)


@dataclass
class _Trigger:
    namespace: str
    graph_name: str
    start_ns: int
    headers: Mapping[str, str] | None
    run: RunContext | None = None


def _json_response(content: dict[str, Any]) -> Any:
    # The app's own response class; FastAPI sends a Response as it is, past the response model.
    responses = importlib.import_module("fastapi.responses")
    return responses.JSONResponse(content=content)


def _model_json(model: Any) -> dict[str, Any] | None:
    dump = getattr(model, "model_dump", None)
    return dump(mode="json") if callable(dump) else None


def make_request_wrapper(side: ServerSide) -> AsyncMethod:
    """Around ``RequestIdMiddleware.dispatch(request, call_next)``: keep the request's headers at hand."""

    async def with_headers(
        wrapped: AsyncMethod, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        request = call_argument(args, kwargs, 0, "request", None)
        headers = getattr(request, "headers", None)
        token = _request_headers.set(headers if side.enabled and isinstance(headers, Mapping) else None)
        try:
            return await wrapped(*args, **kwargs)
        finally:
            _request_headers.reset(token)

    return with_headers


def make_trigger_wrapper(side: ServerSide) -> AsyncMethod:
    """Around ``trigger_graph(namespace_name, graph_name, body, x_exosphere_request_id)``."""

    async def traced_trigger(
        wrapped: AsyncMethod, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if not side.enabled:
            return await wrapped(*args, **kwargs)
        headers = _request_headers.get()
        pending = _Trigger(
            str(call_argument(args, kwargs, 0, "namespace_name", "")),
            str(call_argument(args, kwargs, 1, "graph_name", "")),
            time.time_ns(),
            headers,
        )
        token = _trigger.set(pending)
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException:
            if pending.run is not None:
                with guard("forgetting a run that failed to start"):
                    await side.run_failed_to_start(pending.run.run_id)
            raise
        finally:
            _trigger.reset(token)
        if pending.run is None:
            return result
        answer = None
        with guard("completing a run's start"):
            await side.run_started(pending.run)
            if headers is not None:  # a request (cron triggers have none): tell the client
                content = _model_json(result)
                if content is not None and content.get("run_id") == pending.run.run_id:
                    answer = _json_response({**content, **side.trigger_answer_extension(pending.run)})
        return answer if answer is not None else result

    return traced_trigger


def make_run_insert_wrapper(side: ServerSide) -> AsyncMethod:
    """Around ``Run.insert()``: inside a trigger, the run's context is kept before any of its states exist."""

    async def traced_insert(
        wrapped: AsyncMethod, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        pending = _trigger.get()
        run_id = getattr(instance, "run_id", None)
        if side.enabled and pending is not None and pending.run is None and isinstance(run_id, str):
            with guard("keeping a run's context"):
                pending.run = await side.run_starting(
                    run_id, pending.namespace, pending.graph_name, pending.start_ns, pending.headers
                )
        return await wrapped(*args, **kwargs)

    return traced_insert


def make_find_state_wrapper(side: ServerSide) -> AsyncMethod:
    """Around ``find_state(namespace_name, nodes)``: remember the state a runtime is given."""

    async def remember(
        wrapped: AsyncMethod, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        state = await wrapped(*args, **kwargs)
        taken = _taken.get()
        if state is not None and taken is not None:
            taken[str(getattr(state, "id", ""))] = state
        return state

    return remember


def make_enqueue_wrapper(side: ServerSide) -> AsyncMethod:
    """Around ``enqueue_states(namespace_name, body, x_exosphere_request_id)``: the enqueue extension."""

    async def traced_enqueue(
        wrapped: AsyncMethod, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if not side.enabled:
            return await wrapped(*args, **kwargs)
        taken: dict[str, Any] = {}
        token = _taken.set(taken)
        try:
            answer = await wrapped(*args, **kwargs)
        finally:
            _taken.reset(token)
        extended = None
        with guard("extending an enqueue answer"):
            extended = await _extend_enqueue_answer(
                side, answer, taken, str(call_argument(args, kwargs, 0, "namespace_name", ""))
            )
        return extended if extended is not None else answer

    return traced_enqueue


async def _extend_enqueue_answer(side: ServerSide, answer: Any, taken: dict[str, Any], namespace: str) -> Any:
    content = _model_json(answer)
    if content is None:
        return None
    states = content.get("states")
    if not isinstance(states, list):
        return None
    records = [
        TakenState(
            state_id=state_id,
            run_id=str(getattr(found, "run_id", "")),
            parents=dict(getattr(found, "parents", None) or {}),
            retry_count=int(getattr(found, "retry_count", 0) or 0),
            created_ns=epoch_ns(getattr(found, "created_at", None)),
        )
        for state in states
        if isinstance(state, dict)
        and (found := taken.get(state_id := str(state.get("state_id")))) is not None
    ]
    extensions = await side.states_taken(records, namespace)
    if not extensions:
        return None
    for state in states:
        if isinstance(state, dict):
            state.update(extensions.get(str(state.get("state_id")), {}))
    return _json_response(content)


def make_next_states_wrapper(side: ServerSide) -> AsyncMethod:
    """Around ``create_next_states(state_ids, ...)``: its states' runs cannot settle until it ends."""

    async def traced_next_states(
        wrapped: AsyncMethod, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if not side.enabled:
            return await wrapped(*args, **kwargs)
        token = None
        with guard("noting next states in progress"):
            state_ids = [str(s) for s in call_argument(args, kwargs, 0, "state_ids", None) or ()]
            if state_ids:
                token = await side.store.begin_next_states(state_ids)
        try:
            return await wrapped(*args, **kwargs)
        finally:
            if token is not None:
                with guard("noting next states done"):
                    await side.store.end_next_states(token, time.time_ns())
                    side.sweeper.nudge()

    return traced_next_states


async def _report(
    side: ServerSide, wrapped: AsyncMethod, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Call a controller a runtime's report reaches (``namespace_name, state_id, ...``), the attempt's CPU
    time noted first (then the run cannot settle without it) and withdrawn if the controller refuses."""
    token = None
    if side.enabled:
        with guard("noting a reported attempt's CPU time"):
            state_id = str(call_argument(args, kwargs, 1, "state_id", ""))
            token = await side.attempt_reported(state_id, _request_headers.get())
    try:
        return await wrapped(*args, **kwargs)
    except BaseException:
        if token is not None:
            with guard("withdrawing a refused report's CPU time"):
                await side.report_refused(token)
        raise


def make_executed_wrapper(side: ServerSide) -> AsyncMethod:
    """Around ``executed_state(namespace_name, state_id, body, ...)``: the attempt's CPU time."""

    async def traced_executed(
        wrapped: AsyncMethod, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        return await _report(side, wrapped, args, kwargs)

    return traced_executed


def make_settled_wrapper(side: ServerSide) -> AsyncMethod:
    """Around ``errored_state`` and ``prune_signal`` (``namespace_name, state_id, body, ...``): the state
    settled (ERRORED, RETRY_CREATED or PRUNED), so its run is touched for the sweep."""

    async def traced_settle(
        wrapped: AsyncMethod, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        result = await _report(side, wrapped, args, kwargs)
        if side.enabled:
            with guard("noting a settled state"):
                await side.store.note_settled(str(call_argument(args, kwargs, 1, "state_id", "")))
                side.sweeper.nudge()
        return result

    return traced_settle


def make_requeue_wrapper(side: ServerSide) -> AsyncMethod:
    """Around ``re_queue_after_signal(namespace_name, state_id, body, ...)``: the requeue as an event."""

    async def traced_requeue(
        wrapped: AsyncMethod, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        now = time.time_ns()
        result = await _report(side, wrapped, args, kwargs)
        if side.enabled:
            with guard("noting a requeue"):
                body = call_argument(args, kwargs, 2, "body", None)
                delay = int(getattr(body, "enqueue_after", 0) or 0)
                await side.store.note_requeue(str(call_argument(args, kwargs, 1, "state_id", "")), now, delay)
        return result

    return traced_requeue


def make_manual_retry_wrapper(side: ServerSide) -> AsyncMethod:
    """Around ``manual_retry_state(namespace_name, state_id, body, ...)``: link the retry, reopen its run."""

    async def traced_retry(
        wrapped: AsyncMethod, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        result = await wrapped(*args, **kwargs)
        if side.enabled:
            with guard("noting a manual retry"):
                retried = str(call_argument(args, kwargs, 1, "state_id", ""))
                new_id = str(getattr(result, "id", ""))
                state_model = importlib.import_module("app.models.db.state").State
                found = await state_model.get_pymongo_collection().find_one(
                    {"_id": _object_id(new_id)},
                    {"run_id": 1, "namespace_name": 1, "graph_name": 1, "created_at": 1},
                )
                if found is not None:
                    await side.state_retried(
                        new_id, retried, str(found["run_id"]), str(found.get("namespace_name", "")),
                        str(found.get("graph_name", "")), epoch_ns(found.get("created_at")) or time.time_ns(),
                    )
        return result

    return traced_retry


def _object_id(value: str) -> Any:
    bson = importlib.import_module("bson")
    return bson.ObjectId(value) if bson.ObjectId.is_valid(value) else value
