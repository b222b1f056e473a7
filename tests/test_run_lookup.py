"""RunLookup over real HTTP: right runs and parents, bounded calls and caches, quiet failures."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from conformance_graph import GRAPH, NAMESPACE, NODES, upsert
from exo_otel.embedded import EmbeddedStateManager, StateView
from exo_otel.sdk.run_lookup import RunInfo, RunLookup
from sm_fixtures import free_port, running_runtime, sdk_state_manager, wait_for_run

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


def lookup_for(sm: EmbeddedStateManager, **limits: int) -> RunLookup:
    return RunLookup(sm.uri, NAMESPACE, sm.api_key, **limits)


# --- against the embedded state manager, driven by the real SDK ---


async def test_states_of_concurrent_runs_resolve_to_their_run_and_parent(
    state_manager: EmbeddedStateManager,
) -> None:
    sm = state_manager
    run_ids = await finished_runs(sm, 3)
    states = [state for run_id in run_ids for state in sm.states(run_id)]
    lookup = lookup_for(sm)

    resolved = await lookup.resolve([state.id for state in states])

    assert resolved == expected(states)
    assert lookup.calls == 4  # one runs page, then the graph of each run
    for run_id in run_ids:
        by_identifier = {s.identifier: s for s in sm.states(run_id)}
        assert resolved[by_identifier["start"].id] == RunInfo(run_id, GRAPH, None)
        assert resolved[by_identifier["prep"].id].parent_state_id == by_identifier["start"].id
        # split fans out into three states (itself and two copies); each feeds one work state.
        split = {s.id for s in sm.states(run_id) if s.identifier == "split"}
        work = [s for s in sm.states(run_id) if s.identifier == "work"]
        assert len(split) == len(work) == 3
        assert {resolved[s.id].parent_state_id for s in work} == split

    # Known ids come from the cache; an unknown id costs one runs page, as finished runs cannot grow.
    assert await lookup.resolve([state.id for state in states[::-1]]) == expected(states)
    assert lookup.calls == 4
    assert await lookup.resolve([UNKNOWN_ID]) == {}
    assert lookup.calls == 5


async def test_calls_per_resolve_are_bounded_and_newest_runs_come_first(
    state_manager: EmbeddedStateManager,
) -> None:
    sm = state_manager
    run_ids = await finished_runs(sm, 4)
    states = sm.states()
    ids = [state.id for state in states]

    lookup = lookup_for(sm, max_calls_per_poll=2)
    found_order: list[set[str]] = []
    resolved: dict[str, RunInfo] = {}
    for _ in range(len(run_ids)):
        before = lookup.calls
        answer = await lookup.resolve(ids)
        assert lookup.calls - before <= 2
        found_order.append({info.run_id for info in answer.values()} - {i.run_id for i in resolved.values()})
        resolved = answer
    assert resolved == expected(states)
    assert found_order == [{run_id} for run_id in reversed(run_ids)]

    # An unknown id against runs not indexed yet spends exactly the bound, then gives up.
    fresh = lookup_for(sm, max_calls_per_poll=3)
    assert await fresh.resolve([UNKNOWN_ID]) == {}
    assert fresh.calls == 3

    # The oldest run is the last one on the second page of two.
    paged = lookup_for(sm, max_calls_per_poll=10, page_size=2)
    oldest_root = next(s for s in sm.states(run_ids[0]) if not s.parents)
    assert await paged.resolve([oldest_root.id]) == {oldest_root.id: RunInfo(run_ids[0], GRAPH, None)}
    assert paged.calls == 1 + 2 + 1 + 2  # page 1, its two graphs, page 2, its two graphs; no page 3


async def test_growing_run_is_fetched_again_and_finished_run_is_not(
    state_manager: EmbeddedStateManager,
) -> None:
    sm = state_manager
    client = sdk_state_manager(sm, NAMESPACE)
    async with running_runtime(sm, NAMESPACE, NODES):
        await upsert(client)
    # No runtime polls now: the run stays PENDING with only its root state.
    run_id = (await client.trigger(GRAPH, store={"topic": "growing"}))["run_id"]
    (root,) = sm.states(run_id)
    lookup = lookup_for(sm)
    assert await lookup.resolve([root.id]) == {root.id: RunInfo(run_id, GRAPH, None)}
    assert lookup.calls == 2
    # Still pending but no new state: the runs page shows the same count, so the graph is not fetched.
    assert await lookup.resolve([UNKNOWN_ID]) == {}
    assert lookup.calls == 3

    async with running_runtime(sm, NAMESPACE, NODES):
        assert await wait_for_run(sm, run_id) == "SUCCESS"
    states = sm.states(run_id)
    assert len(states) > 1
    assert await lookup.resolve([state.id for state in states]) == expected(states)
    assert lookup.calls == 5
    assert await lookup.resolve([UNKNOWN_ID]) == {}
    assert lookup.calls == 6


async def test_wrong_api_key_gives_nothing(state_manager: EmbeddedStateManager) -> None:
    (run_id,) = await finished_runs(state_manager, 1)
    lookup = RunLookup(state_manager.uri, NAMESPACE, "not-the-key")
    assert await lookup.resolve([state.id for state in state_manager.states(run_id)]) == {}
    assert lookup.calls == 1  # the runs page answers 401; no graph is asked for


async def test_caches_are_bounded(state_manager: EmbeddedStateManager) -> None:
    sm = state_manager
    run_ids = await finished_runs(sm, 2)
    states = sm.states()
    ids = [state.id for state in states]

    small = lookup_for(sm, max_cached_states=5)
    assert await small.resolve(ids) == expected(states)  # the answer is whole even if the cache is not
    assert small.calls == 3
    # Newest run first, so the most recently indexed states are the last five of the oldest run.
    recent = sm.states(run_ids[0])[-5:]
    assert await small.resolve([state.id for state in recent]) == expected(recent)
    assert small.calls == 3
    # Evicted states are found again: their runs' graphs are fetched anew.
    assert await small.resolve(ids[:1]) == expected(states[:1])
    assert small.calls > 3

    # One run remembered while the page lists two: each page forgets the other run, so ruling out an
    # unknown id fetches both graphs again (with room for both it costs only the page).
    forgetful = lookup_for(sm, max_cached_runs=1)
    assert await forgetful.resolve(ids) == expected(states)
    assert forgetful.calls == 1 + len(run_ids)
    assert await forgetful.resolve([UNKNOWN_ID]) == {}
    assert forgetful.calls == 2 * (1 + len(run_ids))


# --- a stand-in server for the failure modes the embedded state manager cannot produce ---


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """Serve one handler for every path on 127.0.0.1; gives the base uri."""
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_unreachable_port_gives_nothing_quickly() -> None:
    lookup = RunLookup(f"http://127.0.0.1:{free_port()}", NAMESPACE, API_KEY, timeout_s=1.0)
    started = time.monotonic()
    assert await lookup.resolve(["a" * 24, "b" * 24]) == {}
    assert time.monotonic() - started < 1.5
    # A transport failure ends the resolve: no further calls are spent on a dead server.
    assert lookup.calls == 1


async def test_server_that_never_answers_times_out(serve: Callable[[Handler], Awaitable[str]]) -> None:
    async def sleepy(request: web.Request) -> web.Response:
        await asyncio.sleep(10)
        return web.json_response({})

    lookup = RunLookup(await serve(sleepy), NAMESPACE, API_KEY, timeout_s=0.3)
    started = time.monotonic()
    assert await lookup.resolve(["a" * 24]) == {}
    assert time.monotonic() - started < 1.0
    assert lookup.calls == 1


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

    lookup = RunLookup(await serve(handler), NAMESPACE, API_KEY, max_calls_per_poll=3)
    assert await lookup.resolve(["s-wanted"]) == {}
    assert lookup.calls <= 3


async def test_error_status_gives_nothing(serve: Callable[[Handler], Awaitable[str]]) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"detail": "boom"}, status=500)

    lookup = RunLookup(await serve(handler), NAMESPACE, API_KEY)
    assert await lookup.resolve(["s-wanted"]) == {}
    assert lookup.calls == 1


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
        lookup = RunLookup(base_uri, NAMESPACE, API_KEY)
        assert await lookup.resolve(["s-child"]) == {"s-child": RunInfo("r1", "g", "s-root")}
        assert lookup.calls == 2
        assert exporter.get_finished_spans() == ()
    finally:
        instrumentor.uninstrument()
