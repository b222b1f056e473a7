"""The state manager side forgets settled runs after its retention, and late events stay exactly once.

Runs of a one-node graph settle on a server with the side and a retention of a few seconds: their
records (run contexts, claims, notes) are counted while retained and after the retention passed
(0 left). A manual retry within the retention reopens the run: the server emits the retry's node span,
once, and the run keeps one outcome. A manual retry after the retention finds no records: the runtime
places and emits the retry's node span itself, once, in the run's trace. Embedded and real server.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

import aiohttp
import pytest
from exospherehost import GraphNodeModel, StoreConfigModel
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exo_otel.core.ids import format_trace_id, run_span_id, state_span_id
from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from exo_otel.server.mongo_store import CLAIMS_COLLECTION, NOTES_COLLECTION, RUNS_COLLECTION
from exo_otel.server.sweeper import RETENTION_ENV
from exo_otel_demo.embedded import EmbeddedStateManager
from exo_otel_demo.embedded.server_side import MemoryRunStore
from helpers.otlp_receiver import OtlpHttpReceiver, Span
from helpers.servers import EmbeddedServer, Server, UpstreamServerUnderTest
from helpers.stuck_runs import Step
from helpers.trace_checks import flatten
from helpers.upstream_side import side_server
from helpers.upstream_sm import require_upstream

GRAPH = "retained"
# Long enough that no run expires before the last one settled, with room for a loaded machine: 2,000
# runs take about 10 s on the embedded server, 8 minutes on the real one over its in-process database,
# and every run must still be retained
# when the test counts (a CI run took 40 s to settle 2,000 runs on the embedded server, when the
# retention was 30 s, and 176 runs were already gone; 200 runs on a busy machine took 12-32 s upstream).
RETENTION_SECONDS = {
    ("embedded", 200): 30, ("embedded", 2000): 120, ("upstream", 200): 60, ("upstream", 2000): 600,
}
COLLECTIONS = (RUNS_COLLECTION, CLAIMS_COLLECTION, NOTES_COLLECTION)


@dataclass
class RetainingSide:
    server: Server
    spans: Callable[[], list[Span]]
    records: Callable[[], Awaitable[dict[str, int]]]  # documents per exo_otel collection
    retention: float


@pytest.fixture(params=["embedded", pytest.param("upstream", marks=pytest.mark.upstream)])
async def side(
    request: pytest.FixtureRequest,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[RetainingSide]:
    retention = RETENTION_SECONDS[request.param, request.node.callspec.params["runs"]]
    if request.param == "embedded":
        monkeypatch.setenv(RETENTION_ENV, str(retention))
        async with EmbeddedStateManager(server_side=True, tracer_provider=tracer_provider) as sm:
            side = sm._api.side
            assert side is not None
            side.side.sweeper.check_interval = 2.0  # the default's 10 s would only make the test wait
            store = side.side.store
            assert isinstance(store, MemoryRunStore)

            async def counts() -> dict[str, int]:
                return {
                    RUNS_COLLECTION: len(store.runs),
                    CLAIMS_COLLECTION: sum(len(keys) for keys in store.claims.values()),
                    NOTES_COLLECTION: sum(len(notes) for notes in store.notes.values()),
                }

            spans = lambda: flatten(span_exporter.get_finished_spans())  # noqa: E731
            yield RetainingSide(EmbeddedServer(sm), spans, counts, retention)
        return
    require_upstream()
    rx: OtlpHttpReceiver = request.getfixturevalue("receiver")
    with side_server(rx, history=False, **{RETENTION_ENV: str(retention)}) as server:

        async def documents() -> dict[str, int]:
            async with aiohttp.ClientSession() as session:
                found = {}
                for collection in COLLECTIONS:
                    async with session.get(f"{server.uri}/__harness/documents/{collection}") as answer:
                        answer.raise_for_status()
                        found[collection] = int((await answer.json())["count"])
                return found

        yield RetainingSide(
            UpstreamServerUnderTest(server), lambda: rx.spans() + flatten(span_exporter.get_finished_spans()),
            documents, retention,
        )


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpHttpReceiver]:
    with OtlpHttpReceiver() as rx:
        yield rx


async def wait_for(what: str, predicate: Callable[[], Awaitable[bool]], timeout: float) -> float:
    started = time.monotonic()
    while not await predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.5)
    return time.monotonic() - started


async def trigger_all(server: Server, namespace: str, runs: int) -> list[str]:
    url = f"{server.uri}/v0/namespace/{namespace}/graph/{GRAPH}/trigger"
    limit = asyncio.Semaphore(32)

    async def one(session: aiohttp.ClientSession) -> str:
        async with limit, session.post(
            url, json={"store": {"topic": uuid.uuid4().hex}}, headers={"x-api-key": server.api_key}
        ) as answer:
            answer.raise_for_status()
            return str((await answer.json())["run_id"])

    async with aiohttp.ClientSession() as session:
        return list(await asyncio.gather(*(one(session) for _ in range(runs))))


async def manual_retry(server: Server, namespace: str, state_id: str) -> str:
    status, answer = await server.request(
        "POST", f"/v0/namespace/{namespace}/state/{state_id}/manual-retry", {"fanout_id": uuid.uuid4().hex}
    )
    assert status == 200, answer
    return str(answer["id"])


@pytest.mark.timeout(2400)
@pytest.mark.parametrize("runs", [200, pytest.param(2000, marks=pytest.mark.long_load)])
async def test_settled_runs_are_forgotten_after_the_retention_and_late_retries_stay_once(
    side: RetainingSide, instrumentor: ExosphereInstrumentor, runs: int
) -> None:
    server = side.server
    namespace = f"retained-{uuid.uuid4().hex[:8]}"
    async with server.runtime(namespace, [Step], workers=8, batch_size=32):
        await server.client(namespace).upsert_graph(
            GRAPH,
            [GraphNodeModel(node_name="Step", namespace=namespace, identifier="once",
                            inputs={"topic": "${{ store.topic }}"})],
            {},
            store_config=StoreConfigModel(required_keys=["topic"]),
        )  # type: ignore[arg-type]
        started = time.monotonic()
        run_ids = await trigger_all(server, namespace, runs)
        traces = {format_trace_id(run_id): run_id for run_id in run_ids}

        def outcomes() -> Counter[str]:
            return Counter(
                s.trace_id for s in side.spans() if s.name == f"settle {GRAPH}" and s.trace_id in traces
            )

        async def all_settled() -> bool:
            return len(outcomes()) == runs

        await wait_for("every run's outcome", all_settled, timeout=60 + runs * 0.5)
        settled_s = time.monotonic() - started

        async def closed() -> bool:
            # A run closes (its notes dropped) once its outcome's claim is confirmed, after the export.
            return (await side.records())[NOTES_COLLECTION] == 0

        await wait_for("every run closed", closed, timeout=30)
        retained = await side.records()

        # Within the retention: a retry reopens its run, the server emits its node span.
        early_run = run_ids[0]
        early_state = await first_state(server, namespace, early_run)
        early_retry = await manual_retry(server, namespace, early_state)

        async def forgotten() -> bool:
            return (await side.records())[RUNS_COLLECTION] == 0

        purge_timeout = side.retention + 60
        purged_after_s = await wait_for("the retention's purge", forgotten, timeout=purge_timeout)
        after = await side.records()

        # After the retention: no records; the runtime places the retry itself.
        late_run = run_ids[1]
        late_state = await first_state(server, namespace, late_run)
        late_retry = await manual_retry(server, namespace, late_state)

        def node_spans(state_id: str) -> list[Span]:
            wanted = f"{state_span_id(state_id):016x}"
            return [s for s in side.spans() if s.span_id == wanted and s.name.startswith("node ")]

        async def retries_out() -> bool:
            return bool(node_spans(early_retry)) and bool(node_spans(late_retry))

        await wait_for("the retries' node spans", retries_out, timeout=60)
        await asyncio.sleep(1.5)  # a duplicate, were there one, would be out by now
    print(
        f"\n[retention {server.kind}] runs={runs} settled in {settled_s:.1f} s; records while retained "
        f"{retained}; {side.retention:.0f} s retention, all gone {purged_after_s:.1f} s after the last "
        f"outcome: {after}"
    )
    assert retained[RUNS_COLLECTION] == runs
    assert retained[CLAIMS_COLLECTION] == 3 * runs  # a root, a node span and an outcome per run
    assert retained[NOTES_COLLECTION] == 0  # dropped at settle
    assert after == {collection: 0 for collection in COLLECTIONS}
    for retry, run_id in ((early_retry, early_run), (late_retry, late_run)):
        [span] = node_spans(retry)
        assert span.trace_id == format_trace_id(run_id)
        assert span.parent_span_id == f"{run_span_id(run_id):016x}"
    assert outcomes()[format_trace_id(early_run)] == 1 and outcomes()[format_trace_id(late_run)] == 1
    assert max(Counter((s.trace_id, s.span_id) for s in side.spans() if s.trace_id in traces).values()) == 1


async def first_state(server: Server, namespace: str, run_id: str) -> str:
    """The run's one state (the runs' graph route, which both servers answer)."""
    status, graph = await server.request("GET", f"/v0/namespace/{namespace}/states/run/{run_id}/graph")
    assert status == 200, graph
    [node] = graph["nodes"]
    return str(node["id"])
