"""RunApiPlacement over real HTTP: right runs and parents, bounded calls and caches, quiet failures."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exo_otel.sdk.run_api_placement import RunApiPlacement, RunInfo
from exo_otel.sdk.run_index import GraphNodes, RunIndex
from exo_otel_demo.embedded import EmbeddedStateManager, StateView
from helpers.conformance_graph import GRAPH, NAMESPACE, NODES, upsert
from helpers.http_proxy import serve_loopback
from helpers.sm_fixtures import free_port, running_runtime, sdk_state_manager, wait_for_run

API_KEY = "lookup-key"
UNKNOWN_ID = "0" * 24
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def finished_runs(sm: EmbeddedStateManager, count: int) -> list[str]:
    """Trigger ``count`` runs of the conformance graph one after the other; return them once all are done."""
    client = sdk_state_manager(sm, NAMESPACE)
    async with running_runtime(sm, NAMESPACE, NODES):
        await upsert(client)
        run_ids = [
            (await client.trigger(GRAPH, store={"topic": f"lookup-{uuid.uuid4().hex[:8]}"}))["run_id"]
            for _ in range(count)
        ]
        for run_id in run_ids:
            assert await wait_for_run(sm, run_id) == "SUCCESS"
    return run_ids


def expected(states: list[StateView]) -> dict[str, RunInfo]:
    """What the server recorded: the run, and the last of the parents (the direct one)."""
    return {
        s.id: RunInfo(s.run_id, s.graph_name, list(s.parents.values())[-1] if s.parents else None)
        for s in states
    }


def placement_for(sm: EmbeddedStateManager, **options: Any) -> RunApiPlacement:
    return RunApiPlacement(sm.uri, NAMESPACE, sm.api_key, **options)


async def place(lookup: RunApiPlacement, state_ids: list[str], timeout: float = 5.0) -> dict[str, RunInfo]:
    """Hand the states to the background lookup and wait for each (as workers would)."""
    lookup.want(state_ids)
    found = {}
    for state_id in state_ids:
        info = await lookup.wait(state_id, timeout)
        lookup.taken(state_id)
        if info is not None:
            found[state_id] = info
    return found


# --- against the embedded state manager, driven by the real SDK ---


async def test_states_of_concurrent_runs_resolve_to_their_run_and_parent(
    state_manager: EmbeddedStateManager,
) -> None:
    sm = state_manager
    run_ids = await finished_runs(sm, 3)
    states = [state for run_id in run_ids for state in sm.states(run_id)]
    lookup = placement_for(sm)
    try:
        resolved = await place(lookup, [state.id for state in states])
        assert resolved == expected(states)
        assert lookup.pages == 1 and lookup.graphs == 3  # one runs page, then the graph of each run
        for run_id in run_ids:
            by_identifier = {s.identifier: s for s in sm.states(run_id)}
            assert resolved[by_identifier["start"].id] == RunInfo(run_id, GRAPH, None)
            assert resolved[by_identifier["prep"].id].parent_state_id == by_identifier["start"].id
            # split fans out into three states (itself and two copies); each feeds one work state.
            split = {s.id for s in sm.states(run_id) if s.identifier == "split"}
            work = [s for s in sm.states(run_id) if s.identifier == "work"]
            assert len(split) == len(work) == 3
            assert {resolved[s.id].parent_state_id for s in work} == split
        # Known ids come from the index with no call; an unknown id costs one runs page, as finished runs
        # cannot grow.
        assert await place(lookup, [state.id for state in states[::-1]]) == expected(states)
        assert lookup.calls == 4
        assert await place(lookup, [UNKNOWN_ID], timeout=0.5) == {}
        assert lookup.calls == 5
    finally:
        await lookup.close()


async def test_budget_bounds_calls_per_second(state_manager: EmbeddedStateManager) -> None:
    sm = state_manager
    await finished_runs(sm, 4)
    ids = [state.id for state in sm.states()]
    lookup = placement_for(sm, calls_per_second=4)
    try:
        started = time.monotonic()
        resolved = await place(lookup, ids, timeout=5.0)
        elapsed = time.monotonic() - started
        assert resolved == expected(sm.states())
        # 5 calls (a page, 4 graphs): 4 from the full bucket, the fifth a quarter second later.
        assert lookup.calls == 5
        assert elapsed >= 0.2
    finally:
        await lookup.close()
    # Closed (the runtime stopped): nothing starts again.
    assert await place(lookup, ids[:1]) == expected(sm.states()[:1])  # known, no call needed
    lookup.want(["f" * 24])
    assert lookup.calls == 5
    # Budget 0: no call at all, nothing found, no waiting.
    off = placement_for(sm, calls_per_second=0)
    assert await place(off, ids[:1]) == {}
    assert off.calls == 0


async def test_paging_reaches_older_pending_runs(state_manager: EmbeddedStateManager) -> None:
    sm = state_manager
    client = sdk_state_manager(sm, NAMESPACE)
    async with running_runtime(sm, NAMESPACE, NODES):
        await upsert(client)
    # No runtime polls now: every run stays pending with its root state; the oldest is on page 3 of 2 runs.
    run_ids = [(await client.trigger(GRAPH, store={"topic": f"page-{i}"}))["run_id"] for i in range(5)]
    (oldest_root,) = sm.states(run_ids[0])
    lookup = placement_for(sm, page_size=2)
    try:
        assert await place(lookup, [oldest_root.id]) == {oldest_root.id: RunInfo(run_ids[0], GRAPH, None)}
        assert lookup.pages == 3
    finally:
        await lookup.close()


async def test_growing_run_is_fetched_again_and_finished_run_is_not(
    state_manager: EmbeddedStateManager,
) -> None:
    sm = state_manager
    client = sdk_state_manager(sm, NAMESPACE)
    async with running_runtime(sm, NAMESPACE, NODES):
        await upsert(client)
    run_id = (await client.trigger(GRAPH, store={"topic": "growing"}))["run_id"]
    (root,) = sm.states(run_id)
    lookup = placement_for(sm)
    try:
        assert await place(lookup, [root.id]) == {root.id: RunInfo(run_id, GRAPH, None)}
        assert (lookup.pages, lookup.graphs) == (1, 1)
        # Still pending but no new state: the runs page shows the same count, so no graph is fetched.
        assert await place(lookup, [UNKNOWN_ID], timeout=0.5) == {}
        assert (lookup.pages, lookup.graphs) == (2, 1)

        async with running_runtime(sm, NAMESPACE, NODES):
            assert await wait_for_run(sm, run_id) == "SUCCESS"
        states = sm.states(run_id)
        assert len(states) > 1
        # Settled with new states: fetched once more, then never again.
        assert await place(lookup, [s.id for s in states]) == expected(states)
        assert (lookup.pages, lookup.graphs) == (3, 2)
        assert await place(lookup, [UNKNOWN_ID], timeout=0.5) == {}
        assert (lookup.pages, lookup.graphs) == (4, 2)
    finally:
        await lookup.close()


async def test_wrong_api_key_gives_nothing(state_manager: EmbeddedStateManager) -> None:
    (run_id,) = await finished_runs(state_manager, 1)
    lookup = RunApiPlacement(state_manager.uri, NAMESPACE, "not-the-key")
    try:
        assert await place(lookup, [s.id for s in state_manager.states(run_id)], timeout=0.5) == {}
        assert lookup.calls == 1  # the runs page answers 401; no graph is asked for
        assert not lookup.can_place_within(1.0)  # failing: workers do not wait
    finally:
        await lookup.close()


def test_index_is_bounded() -> None:
    index = RunIndex(max_states=3, max_runs=2)
    graph = GraphNodes("g", ["a", "b", "c", "d"], {"b": "a"}, {n: "x" for n in "abcd"})
    index.index_graph("r1", graph, 1.0)
    assert list(index.states) == ["b", "c", "d"]
    # The run lost a state from the index: it must be fetched again to find it.
    record = index.runs.peek("r1")
    assert record is not None and record.indexed_count == -1
    for run_id in ("r2", "r3"):
        index.record(run_id)
    assert list(index.runs) == ["r2", "r3"]


# --- a stand-in server for the failure modes the embedded state manager cannot produce ---


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """Serve one handler for every path on 127.0.0.1; gives the base uri."""
    async with contextlib.AsyncExitStack() as servers:

        async def start(handler: Handler) -> str:
            return await servers.enter_async_context(serve_loopback(handler))

        yield start


async def test_unreachable_port_gives_nothing_quickly() -> None:
    lookup = RunApiPlacement(f"http://127.0.0.1:{free_port()}", NAMESPACE, API_KEY, timeout_s=1.0)
    try:
        started = time.monotonic()
        assert await place(lookup, ["a" * 24, "b" * 24], timeout=0.5) == {}
        assert time.monotonic() - started < 1.5
        # A transport failure pauses the lookup: no further calls are spent on a dead server at once.
        assert lookup.calls == 1
        assert not lookup.can_place_within(1.0)
    finally:
        await lookup.close()


async def test_server_that_never_answers_times_out(serve: Callable[[Handler], Awaitable[str]]) -> None:
    async def sleepy(request: web.Request) -> web.Response:
        await asyncio.sleep(10)
        return web.json_response({})

    lookup = RunApiPlacement(await serve(sleepy), NAMESPACE, API_KEY, timeout_s=0.3)
    try:
        started = time.monotonic()
        # The worker waits its bound, not the call's time.
        assert await place(lookup, ["a" * 24], timeout=0.1) == {}
        assert time.monotonic() - started < 0.3
        await asyncio.sleep(0.4)
        assert lookup.calls == 1
        assert not lookup.can_place_within(1.0)
    finally:
        await lookup.close()


@pytest.mark.parametrize(
    ("runs_body", "graph_body"),
    [
        ("not json", "not json"),
        ([], []),
        ({"runs": "nope"}, {}),
        (
            {"runs": [None, 3, {"run_id": 5}, {"run_id": "r1", "status": "PENDING"}]},
            {"nodes": 3, "edges": []},
        ),
        (
            {"runs": [{"run_id": "r1", "status": "PENDING"}]},
            {"nodes": [None, {"id": 7}, {"id": "s-other"}], "edges": [None, {"source": 1}], "graph_name": 9},
        ),
    ],
)
async def test_malformed_answers_give_nothing(
    serve: Callable[[Handler], Awaitable[str]], runs_body: object, graph_body: object
) -> None:
    async def handler(request: web.Request) -> web.Response:
        body = graph_body if request.path.endswith("/graph") else runs_body
        if isinstance(body, str):
            return web.Response(text=body, content_type="application/json")
        return web.json_response(body)

    lookup = RunApiPlacement(await serve(handler), NAMESPACE, API_KEY, calls_per_second=1)
    try:
        assert await place(lookup, ["s-wanted"], timeout=0.5) == {}
        assert lookup.calls <= 2  # one from the full bucket, one more after a second at most
    finally:
        await lookup.close()


async def test_error_status_gives_nothing(serve: Callable[[Handler], Awaitable[str]]) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"detail": "boom"}, status=500)

    lookup = RunApiPlacement(await serve(handler), NAMESPACE, API_KEY)
    try:
        assert await place(lookup, ["s-wanted"], timeout=0.5) == {}
        assert lookup.calls == 1
    finally:
        await lookup.close()


async def test_own_calls_make_no_client_spans(
    serve: Callable[[Handler], Awaitable[str]],
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    async def handler(request: web.Request) -> web.Response:
        if request.path.endswith("/graph"):
            nodes = [{"id": "s-root"}, {"id": "s-child"}]
            return web.json_response(
                {"graph_name": "g", "nodes": nodes, "edges": [{"source": "s-root", "target": "s-child"}]}
            )
        return web.json_response({"runs": [{"run_id": "r1", "graph_name": "g", "status": "PENDING"}]})

    exporter = span_exporter
    instrumentor = AioHttpClientInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider)
    try:
        base_uri = await serve(handler)
        async with aiohttp.ClientSession() as session, session.get(f"{base_uri}/probe"):
            pass
        assert len(exporter.get_finished_spans()) == 1  # the instrumentation is live
        exporter.clear()
        lookup = RunApiPlacement(base_uri, NAMESPACE, API_KEY)
        try:
            assert await place(lookup, ["s-child"]) == {"s-child": RunInfo("r1", "g", "s-root")}
            assert lookup.calls == 2
        finally:
            await lookup.close()
        assert exporter.get_finished_spans() == ()
    finally:
        instrumentor.uninstrument()
