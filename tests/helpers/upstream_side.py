"""Driving the real upstream state manager with the state manager side loaded: loads, trace checks."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from exospherehost import Runtime, StateManager
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exo_otel.core.ids import format_trace_id
from helpers import upstream_graph as ug
from helpers.http_proxy import CountingProxy, counting_proxy
from helpers.otlp_receiver import OtlpHttpReceiver, Span
from helpers.trace_checks import RunReport, check_runs, flatten
from helpers.upstream_harness.processes import Settings, uvicorn_server
from helpers.upstream_harness.venvs import SIDE_PIP
from helpers.upstream_sm import UpstreamServer, upstream_state_manager

# What `opentelemetry-instrument` runs before the app: configure from OTEL_*, load every entry point.
AUTO_INIT = "opentelemetry.instrumentation.auto_instrumentation:initialize"
EXECUTES_PER_RUN = 10  # start, split, work x3 (+1 requeued attempt), merge, flaky x2, finish


def otel_env(rx: OtlpHttpReceiver, service: str = "state-manager") -> dict[str, str]:
    return {
        "OTEL_SERVICE_NAME": service,
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_BSP_MAX_QUEUE_SIZE": "200000",
    }


@contextlib.contextmanager
def side_server(
    rx: OtlpHttpReceiver, instances: int = 1, history: bool = True, **env: str
) -> Iterator[UpstreamServer]:
    """The real state manager under the launcher's auto-initialisation, exporting to ``rx``."""
    with upstream_state_manager(
        instances, pip=SIDE_PIP, preload=AUTO_INIT, history=history, **{**otel_env(rx), **env}
    ) as server:
        yield server


@contextlib.contextmanager
def deployment_servers(
    name: str, settings: Settings, side: bool = True, **env: str
) -> Iterator[tuple[UpstreamServer, UpstreamServer]]:
    """(the server the runtime polls, the server the triggers go to) of a deployment on ``settings``'s
    database, in real processes (tests/test_upstream_deployments.py): ``workers-4`` (one uvicorn with
    four workers, both roles), ``two-servers`` (two single-worker processes) or ``workers-4+second``
    (four workers polled, a second process triggered). With ``side`` every process runs under
    ``opentelemetry-instrument`` (the side loaded), else plain uvicorn from the same venv."""
    assert name in ("workers-4", "two-servers", "workers-4+second"), name
    pip = SIDE_PIP.split()
    with contextlib.ExitStack() as stack:
        polled = stack.enter_context(uvicorn_server(
            settings, workers=1 if name == "two-servers" else 4, instrument=side, pip=pip, **env
        ))
        triggered = polled
        if name != "workers-4":
            triggered = stack.enter_context(uvicorn_server(settings, instrument=side, pip=pip, **env))
        yield polled, triggered


@contextlib.asynccontextmanager
async def graph_runtime(
    uri: str, api_key: str, namespace: str, workers: int = 8
) -> AsyncIterator[tuple[CountingProxy, StateManager]]:
    """A runtime of the 11-state test graph (docs/state-manager-side.md, section "How it is tested")
    polling ``uri`` through a counting proxy; the graph upserted."""
    async with counting_proxy(uri) as proxy:
        runtime = Runtime(
            namespace=namespace,
            name="i8-runtime",
            nodes=list(ug.NODES),
            state_manager_uri=proxy.uri,
            key=api_key,
            workers=workers,
            batch_size=16,
            poll_interval=0.05,
        )  # type: ignore[arg-type]
        task = runtime.start()
        assert task is not None
        try:
            client = StateManager(namespace=namespace, state_manager_uri=uri, key=api_key)
            await upsert_when_registered(client, namespace)
            yield proxy, client
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def upsert_when_registered(client: StateManager, namespace: str, graph: str = ug.GRAPH) -> None:
    """Upsert the graph once the runtime(s) starting meanwhile have registered its nodes."""
    for attempt in range(100):
        try:
            await ug.upsert(client, namespace, graph)
            return
        except Exception:
            if attempt == 99:
                raise
            await asyncio.sleep(0.1)


def run_signatures(histories: list[dict[str, Any]], run_ids: list[str]) -> list[tuple[tuple[str, ...], ...]]:
    """Each run's states as (identifier, status, status, ...), sorted: equal for equal behaviour."""
    by_run: dict[str, list[tuple[str, ...]]] = {run_id: [] for run_id in run_ids}
    for state in histories:
        if state.get("run_id") in by_run:
            by_run[state["run_id"]].append((state["identifier"], *(h["status"] for h in state["history"])))
    return sorted(tuple(sorted(states)) for states in by_run.values())


async def trigger_runs(
    client: StateManager, uri: str, api_key: str, namespace: str, n: int, sdk: bool, graph: str = ug.GRAPH
) -> list[str]:
    """Start ``n`` runs at once, through the SDK or by plain HTTP POST."""
    if sdk:
        answers = await asyncio.gather(
            *(client.trigger(graph, store={"topic": uuid.uuid4().hex}) for _ in range(n))
        )
        return [str(a["run_id"]) for a in answers]
    async with aiohttp.ClientSession() as session:
        posts = (post_trigger(session, uri, api_key, namespace, graph) for _ in range(n))
        return list(await asyncio.gather(*posts))


async def post_trigger(
    session: aiohttp.ClientSession, uri: str, api_key: str, namespace: str, graph: str = ug.GRAPH
) -> str:
    """One run of ``graph`` started by a plain HTTP POST (a fresh store topic); its run id."""
    url = f"{uri}/v0/namespace/{namespace}/graph/{graph}/trigger"
    body = {"store": {"topic": uuid.uuid4().hex}}
    async with session.post(url, json=body, headers={"x-api-key": api_key}) as answer:
        answer.raise_for_status()
        return str((await answer.json())["run_id"])


async def wait_settled(
    uri: str, api_key: str, namespace: str, run_ids: list[str], timeout: float,
    states_per_run: int = ug.STATES_PER_RUN,
) -> None:
    """Until every run has all its states (``states_per_run``: the test graph's, its join state counted)
    and none pending (the runs API), for at most ``timeout`` seconds in all.

    ``timeout`` bounds the whole wait, each request of it included (a request gets what is left of it,
    not aiohttp's default 300 s total): past it, an AssertionError names the runs not settled at the
    last answer (all of them when no answer came)."""
    deadline = time.monotonic() + timeout
    wanted = set(run_ids)
    done: set[str] = set()
    url = f"{uri}/v0/namespace/{namespace}/runs/1/{max(len(run_ids), 1) + 10}"
    async with aiohttp.ClientSession() as session:
        while True:
            left = deadline - time.monotonic()
            try:
                async with session.get(
                    url, headers={"x-api-key": api_key}, timeout=aiohttp.ClientTimeout(total=max(left, 1.0))
                ) as answer:
                    runs = (await answer.json())["runs"]
            except TimeoutError:
                runs = None
            if runs is not None:
                done = {r["run_id"] for r in runs
                        if r["pending_count"] == 0 and r["total_count"] >= states_per_run}
                if wanted <= done:
                    return
            if runs is None or time.monotonic() > deadline:
                missing = sorted(wanted - done)
                raise AssertionError(
                    f"{len(missing)} of {len(wanted)} runs not settled in {timeout:.0f} s"
                    f"{' (the last runs request did not answer in time)' if runs is None else ''}: "
                    f"{', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}"
                )
            await asyncio.sleep(0.2)


async def run_states(
    uri: str, api_key: str, namespace: str, run_ids: list[str]
) -> dict[str, list[dict[str, Any]]]:
    """Each run's states (``state_id``, ``identifier``, ``status``) from the server's own run-graph route."""
    headers = {"x-api-key": api_key}
    async with aiohttp.ClientSession() as session:

        async def one(run_id: str) -> list[dict[str, Any]]:
            url = f"{uri}/v0/namespace/{namespace}/states/run/{run_id}/graph"
            async with session.get(url, headers=headers) as answer:
                answer.raise_for_status()
                nodes = (await answer.json())["nodes"]
            return [
                {"state_id": n["id"], "identifier": n["identifier"], "status": n["status"]} for n in nodes
            ]

        found = await asyncio.gather(*(one(run_id) for run_id in run_ids))
    return dict(zip(run_ids, found, strict=True))


PENDING = ("CREATED", "QUEUED", "EXECUTED")  # what upstream's runs API counts as pending


async def unsettled_runs(uri: str, api_key: str, namespace: str, run_ids: list[str]) -> dict[str, list[str]]:
    """The runs not settled (a state pending, or fewer than the graph's states), each with its states'
    ``identifier:status`` from the server's run-graph route."""
    states = await run_states(uri, api_key, namespace, run_ids)
    return {
        run_id: sorted(f"{s['identifier']}:{s['status']}" for s in of_run)
        for run_id, of_run in states.items()
        if len(of_run) < ug.STATES_PER_RUN or any(s["status"] in PENDING for s in of_run)
    }


def upstream_prune_race(unsettled: dict[str, list[str]]) -> str:
    """Why a run stuck in this shape is upstream's: every `work` done, one of them PRUNED, no `merge`.
    Upstream 0.0.3's prune handler (app/controller/prune_signal.py) only sets the state PRUNED; it never
    checks the unites node, which only a state's successful execution does. So when the pruned `work`
    is the last of the three to leave QUEUED (its prune reported after the other two succeeded), no
    process ever creates `merge` and the run stays open for good, with or without exo_otel."""
    stuck = [
        run_id for run_id, states in unsettled.items()
        if not any(s.split(":")[1] in PENDING for s in states)
        and "work:PRUNED" in states and not any(s.startswith("merge:") for s in states)
    ]
    if not stuck:
        return ""
    return (f"; {len(stuck)} of them stuck by upstream's prune never creating the unites state (every work "
            "done, one pruned, no merge: see upstream_prune_race)")


async def wait_settled_saying_why(
    uri: str, api_key: str, namespace: str, run_ids: list[str], timeout: float
) -> None:
    """`wait_settled` for runs of the test graph; when some do not settle, the AssertionError says where
    each one stands, and whether upstream's prune race stranded it (`upstream_prune_race`)."""
    try:
        await wait_settled(uri, api_key, namespace, run_ids, timeout=timeout)
    except AssertionError as unsettled:
        where = await unsettled_runs(uri, api_key, namespace, run_ids)
        raise AssertionError(f"{unsettled}: {where}{upstream_prune_race(where)}") from None


@dataclass
class LoadResult:
    run_ids: list[str]
    report: RunReport
    proxy_calls: dict[str, int]
    settle_seconds: float
    spans_seconds: float


def assert_every_run_whole(result: LoadResult, runs: int, killed: bool = False) -> None:
    """docs/trace-model.md, section "Traces never dangle", for a load of the test graph with the side:
    every state placed under its run's one root, every execute under its node span, nothing dangling
    or duplicated, and the runtime asked the run APIs nothing. With a process ``killed``, a span may
    come twice as the same span (exported, the process killed before its claim was confirmed: emitted
    again by another), never as two different ones."""
    report = result.report
    assert report.problems[:5] == []
    assert report.placed == report.states == runs * ug.STATES_PER_RUN
    assert report.roots_per_run == report.outcomes_per_run == {1: runs} and report.outcomes_malformed == 0
    redelivered = report.redelivered_span_ids if killed else 0
    assert report.duplicate_span_ids == redelivered and report.dangling_parents == report.dangling_links == 0
    assert report.executes == runs * EXECUTES_PER_RUN and report.executes_misplaced == 0
    assert result.proxy_calls.get("run_api", 0) == 0


def spans_of(run_ids: list[str], *sources: list[Span]) -> list[Span]:
    traces = {format_trace_id(run_id) for run_id in run_ids}
    return [s for source in sources for s in source if s.trace_id in traces]


async def run_load(
    server: UpstreamServer,
    rx: OtlpHttpReceiver,
    exporter: InMemorySpanExporter,
    n: int,
    sdk: bool,
    trigger_uri: str | None = None,
    settle_seconds_per_run: float = 6.0,
) -> LoadResult:
    """``n`` runs of the 11-state test graph started at once; their traces checked against the server's
    states."""
    namespace = f"i8-{uuid.uuid4().hex[:8]}"
    async with graph_runtime(server.uri, server.api_key, namespace) as (proxy, client):
        started = time.monotonic()
        trigger_at = trigger_uri or server.uri
        client = StateManager(namespace=namespace, state_manager_uri=trigger_at, key=server.api_key)
        run_ids = await trigger_runs(client, trigger_at, server.api_key, namespace, n, sdk)
        timeout = 60 + settle_seconds_per_run * n
        await wait_settled_saying_why(server.uri, server.api_key, namespace, run_ids, timeout=timeout)
        settled = time.monotonic()
        roots = {format_trace_id(r) for r in run_ids}

        def complete() -> bool:
            server_roots = sum(1 for s in rx.spans() if s.name.startswith("settle ") and s.trace_id in roots)
            executes = sum(
                1
                for s in flatten(exporter.get_finished_spans())
                if s.name.startswith("execute ") and s.trace_id in roots
            )
            return server_roots >= n and executes >= EXECUTES_PER_RUN * n

        deadline = time.monotonic() + 30 + 0.2 * n
        while not complete() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        spans_done = time.monotonic()
        calls = dict(proxy.calls)
    await asyncio.sleep(0.5)  # late duplicates, if there were any, would arrive by now
    states_by_run = await run_states(server.uri, server.api_key, namespace, run_ids)
    spans = spans_of(run_ids, rx.spans(), flatten(exporter.get_finished_spans()))
    report = check_runs(spans, states_by_run, ug.GRAPH)
    return LoadResult(run_ids, report, calls, settled - started, spans_done - settled)
