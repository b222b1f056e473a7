"""The state manager side across processes, on the REAL upstream state manager.

Two server instances sharing one database; baggage from the trigger's caller in runtimes of other
processes; a sampler that keeps one graph's runs (not a trace-id sampler) giving whole runs; nothing
changed for users who do not load the side; a broken sampler and span processor failing no request.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from exospherehost import CronTrigger, StateManager, StoreConfigModel
from opentelemetry import baggage, context
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exo_otel.core.ids import format_trace_id
from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from helpers import upstream_graph as ug
from helpers.otlp_receiver import OtlpHttpReceiver
from helpers.proc_runtime import TESTS_DIR, launch, otel_env, print_logs, stop
from helpers.trace_checks import check_runs, flatten
from helpers.upstream_side import (
    EXECUTES_PER_RUN,
    SIDE_PIP,
    assert_every_run_whole,
    graph_runtime,
    run_load,
    run_signatures,
    side_server,
    spans_of,
    trigger_runs,
    upsert_when_registered,
    wait_settled,
)
from helpers.upstream_side import (
    otel_env as server_otel_env,
)
from helpers.upstream_sm import UpstreamServer, require_upstream, state_histories, upstream_state_manager

pytestmark = pytest.mark.upstream

UPSTREAM_ENQUEUE_KEYS = {"count", "namespace", "status", "states"}
UPSTREAM_STATE_KEYS = {"state_id", "node_name", "identifier", "inputs", "created_at"}
EXTENSION_KEYS = {"run_id", "graph_name", "parents", "retry_count", "traceparent", "node_spans"}


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpHttpReceiver]:
    with OtlpHttpReceiver() as rx:
        yield rx


@pytest.mark.timeout(600)
async def test_two_instances_one_database_every_root_once(
    receiver: OtlpHttpReceiver, span_exporter: InMemorySpanExporter, instrumentor: ExosphereInstrumentor
) -> None:
    require_upstream()
    with side_server(receiver, instances=2) as server:
        for runs, sdk in ((10, True), (50, False)):
            # The runtime polls instance 1; the triggers go to instance 2.
            result = await run_load(server, receiver, span_exporter, runs, sdk, trigger_uri=server.uris[1])
            trigger = "sdk" if sdk else "http"
            print(f"\n[two instances] runs={runs} trigger={trigger} {result.report.summary()}")
            assert_every_run_whole(result, runs)


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[tuple[str, list[tuple[str, dict[str, str]]]]]:
    """Records the ``baggage`` header and the JSON body of every POST."""
    seen: list[tuple[str, dict[str, str]]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append((request.headers.get("baggage", ""), await request.json()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/echo", record)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/echo", seen
    finally:
        await runner.cleanup()


@pytest.mark.timeout(600)
async def test_caller_baggage_and_a_graph_sampler_across_processes(
    tmp_path: Path,
    receiver: OtlpHttpReceiver,
    span_exporter: InMemorySpanExporter,
    instrumentor: ExosphereInstrumentor,
) -> None:
    require_upstream()
    dropped_graph = f"{ug.GRAPH}-dropped"
    namespace = f"i8-proc-{uuid.uuid4().hex[:8]}"
    env = {**server_otel_env(receiver), "PYTHONPATH": TESTS_DIR, "EXO_OTEL_KEEP_GRAPH": ug.GRAPH}
    processes: list[subprocess.Popen[str]] = []
    preload = "helpers.server_preloads:keep_one_graph"
    with upstream_state_manager(pip=SIDE_PIP, preload=preload, **env) as server:
        async with echo_server() as (echo, seen):
            try:
                for name in ("runtime-a", "runtime-b"):
                    args = [
                        "--uri",
                        server.uri,
                        f"--key={server.api_key}",
                        "--namespace",
                        namespace,
                        "--nodes",
                        ",".join(n.__name__ for n in ug.NODES),
                        "--name",
                        name,
                        "--workers",
                        "8",
                    ]
                    runtime_env = otel_env(receiver.endpoint, name, **{ug.BAGGAGE_ECHO_URI: echo})
                    processes.append(launch("proc_runtime.py", args, runtime_env, tmp_path / f"{name}.log"))
                client = StateManager(namespace=namespace, state_manager_uri=server.uri, key=server.api_key)
                await upsert_when_registered(client, namespace)
                await upsert_when_registered(client, namespace, dropped_graph)
                token = context.attach(baggage.set_baggage("tenant", "acme"))
                try:
                    kept = await trigger_runs(client, server.uri, server.api_key, namespace, 5, True)
                    dropped = await trigger_runs(
                        client, server.uri, server.api_key, namespace, 5, True, dropped_graph
                    )
                finally:
                    context.detach(token)
                await wait_settled(server.uri, server.api_key, namespace, kept + dropped, timeout=120)
            finally:
                for process in processes:
                    stop(process)  # they flush their spans as they exit
                print_logs(tmp_path)
        histories = await state_histories(server.uri)
    await asyncio.sleep(1.0)
    spans = spans_of(kept + dropped, receiver.spans(), flatten(span_exporter.get_finished_spans()))
    states: dict[str, list[dict[str, Any]]] = {run_id: [] for run_id in kept}
    for state in histories:
        if state.get("run_id") in states:
            states[state["run_id"]].append(state)
    report = check_runs(
        [s for s in spans if s.trace_id in {format_trace_id(r) for r in kept}], states, ug.GRAPH
    )
    services = {s.service_name for s in spans if s.name.startswith("execute ")}
    headers_with_tenant = sum("tenant=acme" in header for header, _body in seen)
    bodies_with_tenant = sum(body.get("tenant") == "acme" for _header, body in seen)
    print(
        f"\n[processes] kept runs: {report.summary()}; execute spans from {sorted(services)}; "
        f"dropped runs' spans: {sum(s.trace_id in {format_trace_id(r) for r in dropped} for s in spans)}; "
        f"node calls {len(seen)}, baggage header with tenant=acme {headers_with_tenant}, "
        f"node baggage with tenant=acme {bodies_with_tenant}"
    )
    # Kept runs are entirely recorded: root, every node span, every execute (two runtime processes), trigger.
    assert report.problems[:5] == []
    # Each runtime process counts attempts on its own: a state requeued or retried in the other one
    # may go round once more, so a run may have more than 11 states. All must be placed.
    assert report.placed == report.states >= 5 * ug.STATES_PER_RUN
    assert report.roots_per_run == report.outcomes_per_run == {1: 5}
    assert report.executes >= 5 * EXECUTES_PER_RUN and report.executes_misplaced == 0
    assert services == {"runtime-a", "runtime-b"}
    assert sum(s.name == f"trigger {ug.GRAPH}" for s in spans) == 5
    # Dropped runs are entirely absent, in every process.
    assert [s for s in spans if s.trace_id in {format_trace_id(r) for r in dropped}] == []
    # The caller's baggage reached every node, and every call node code made, in the other processes.
    assert len(seen) >= 10 * EXECUTES_PER_RUN
    assert headers_with_tenant == bodies_with_tenant == len(seen)


async def _raw_answers(server: UpstreamServer) -> tuple[dict[str, Any], dict[str, Any]]:
    """A trigger answer and an enqueue answer taken by plain HTTP (no runtime polls meanwhile)."""
    namespace = f"i8-raw-{uuid.uuid4().hex[:8]}"
    async with graph_runtime(server.uri, server.api_key, namespace):
        pass  # registers the nodes and upserts the graph
    headers = {"x-api-key": server.api_key}
    base = f"{server.uri}/v0/namespace/{namespace}"
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{base}/graph/{ug.GRAPH}/trigger", json={"store": {"topic": "raw"}}, headers=headers
        ) as answer:
            trigger = await answer.json()
        async with session.post(
            f"{base}/states/enqueue", json={"nodes": ["Start"], "batch_size": 1}, headers=headers
        ) as answer:
            enqueue = await answer.json()
    return trigger, enqueue


async def _three_runs(server: UpstreamServer) -> list[tuple[tuple[str, ...], ...]]:
    namespace = f"i8-hist-{uuid.uuid4().hex[:8]}"
    async with graph_runtime(server.uri, server.api_key, namespace) as (proxy, client):
        run_ids = await trigger_runs(client, server.uri, server.api_key, namespace, 3, True)
        await wait_settled(server.uri, server.api_key, namespace, run_ids, timeout=60)
        assert proxy.calls.get("server_error", 0) == 0
    return run_signatures(await state_histories(server.uri), run_ids)


@pytest.mark.timeout(600)
async def test_nothing_changes_without_the_side_and_histories_are_identical_with_it(
    upstream_sm: UpstreamServer, receiver: OtlpHttpReceiver, instrumentor: ExosphereInstrumentor
) -> None:
    trigger, enqueue = await _raw_answers(upstream_sm)
    assert set(trigger) == {"status", "run_id"}
    assert set(enqueue) == UPSTREAM_ENQUEUE_KEYS and set(enqueue["states"][0]) == UPSTREAM_STATE_KEYS
    plain = await _three_runs(upstream_sm)
    with side_server(receiver) as server:
        side_trigger, side_enqueue = await _raw_answers(server)
        with_side = await _three_runs(server)
    assert set(side_trigger) == {"status", "run_id", "traceparent"}
    assert set(side_enqueue) == UPSTREAM_ENQUEUE_KEYS
    assert set(side_enqueue["states"][0]) == UPSTREAM_STATE_KEYS | EXTENSION_KEYS
    print(
        f"\n[unchanged] plain enqueue state: {sorted(enqueue['states'][0])}; with the side: "
        f"{sorted(side_enqueue['states'][0])}; histories identical: {plain == with_side}"
    )
    assert with_side == plain


@pytest.mark.timeout(600)
async def test_a_broken_sampler_and_span_processor_fail_no_request(
    upstream_sm: UpstreamServer, receiver: OtlpHttpReceiver, instrumentor: ExosphereInstrumentor
) -> None:
    plain = await _three_runs(upstream_sm)
    env = {**server_otel_env(receiver), "PYTHONPATH": TESTS_DIR}
    preload = "helpers.server_preloads:broken_telemetry"
    with upstream_state_manager(pip=SIDE_PIP, preload=preload, **env) as server:
        broken = await _three_runs(server)
        trigger, enqueue = await _raw_answers(server)
    assert trigger["status"] == "CREATED" and enqueue["count"] == 1
    assert broken == plain


@pytest.mark.timeout(600)
async def test_a_cron_triggered_run_has_its_root_and_every_node_span(
    receiver: OtlpHttpReceiver, span_exporter: InMemorySpanExporter, instrumentor: ExosphereInstrumentor
) -> None:
    require_upstream()
    namespace = f"i8-cron-{uuid.uuid4().hex[:8]}"
    with side_server(receiver) as server:
        async with graph_runtime(server.uri, server.api_key, namespace) as (_proxy, client):
            await client.upsert_graph(
                ug.GRAPH,
                ug.graph_nodes(namespace),
                {},
                retry_policy=ug.RETRY_POLICY,
                store_config=StoreConfigModel(required_keys=[], default_values={"topic": "cron"}),
                triggers=[CronTrigger(expression="* * * * *")],
                polling_interval=0.1,
            )  # type: ignore[arg-type]
            url = f"{server.uri}/v0/namespace/{namespace}/runs/1/10"
            run_ids: list[str] = []
            async with aiohttp.ClientSession() as session:
                for _ in range(300):  # the scheduler looks for due triggers once a minute
                    async with session.get(url, headers={"x-api-key": server.api_key}) as answer:
                        run_ids = [r["run_id"] for r in (await answer.json())["runs"]]
                    if run_ids:
                        break
                    await asyncio.sleep(0.5)
            assert run_ids, "no cron-triggered run within 150 s"
            run_ids = run_ids[:1]
            await wait_settled(server.uri, server.api_key, namespace, run_ids, timeout=120)
            await asyncio.sleep(2.0)
        histories = await state_histories(server.uri, run_ids[0])
    spans = spans_of(run_ids, receiver.spans(), flatten(span_exporter.get_finished_spans()))
    report = check_runs(spans, {run_ids[0]: histories}, ug.GRAPH)
    print(f"\n[cron] {report.summary()}")
    assert report.problems[:5] == []
    assert report.placed == report.states == ug.STATES_PER_RUN
    assert report.roots_per_run == report.outcomes_per_run == {1: 1}
    assert report.duplicate_span_ids == report.dangling_parents == report.dangling_links == 0
