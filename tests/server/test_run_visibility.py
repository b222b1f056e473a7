"""A run is visible from its first second (issue 20): with the state manager side, a run whose middle
node waits on a gate has its root among the exported spans one second after the trigger and every
second after, and no exported span names a parent that is not exported yet; once it settles, one root,
one outcome, nothing dangling or duplicated.

On both servers (the embedded one, and the real upstream one under the launcher exporting over OTLP),
with SDK and plain-HTTP triggers. The runtime runs here: its spans are exported to memory at once, the
server's through its batch processor (100 ms) to an OTLP receiver, so a check sees what a backend
would have received by then. Twenty runs of the same graph, not gated, are triggered with it: every
run's root must be out at each check too.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import aiohttp
import pytest
from exospherehost import BaseNode, GraphNodeModel, StoreConfigModel
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel

from exo_otel.core.ids import format_trace_id, run_span_id
from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from exo_otel_demo.embedded import EmbeddedStateManager
from helpers.otlp_receiver import OtlpHttpReceiver, Span
from helpers.servers import EmbeddedServer, Server, UpstreamServerUnderTest
from helpers.trace_checks import check_runs, flatten
from helpers.upstream_side import side_server
from helpers.upstream_sm import require_upstream

GRAPH = "visibility"
GATE_SECONDS = 5  # checks at 1..5 s run while the middle node waits
OTHER_RUNS = 20  # triggered with the gated run, their gates open: the server and runtime are busy
OPEN_GATES: set[str] = set()  # the topics whose run may go past the gate


class VisibleFirst(BaseNode):
    class Inputs(BaseModel):
        topic: str

    class Outputs(BaseModel):
        topic: str

    async def execute(self) -> BaseNode.Outputs:
        return self.Outputs(topic=self.inputs.topic)


class VisibleGate(BaseNode):
    class Inputs(BaseModel):
        topic: str

    class Outputs(BaseModel):
        topic: str

    async def execute(self) -> BaseNode.Outputs:
        while self.inputs.topic not in OPEN_GATES:
            await asyncio.sleep(0.02)
        return self.Outputs(topic=self.inputs.topic)


class VisibleLast(BaseNode):
    class Inputs(BaseModel):
        topic: str

    class Outputs(BaseModel):
        topic: str

    async def execute(self) -> BaseNode.Outputs:
        return self.Outputs(topic=self.inputs.topic)


NODES: list[type[BaseNode]] = [VisibleFirst, VisibleGate, VisibleLast]


def graph_nodes(namespace: str) -> list[GraphNodeModel]:
    return [
        GraphNodeModel(node_name="VisibleFirst", namespace=namespace, identifier="first",
                       inputs={"topic": "${{ store.topic }}"}, next_nodes=["gate"]),
        GraphNodeModel(node_name="VisibleGate", namespace=namespace, identifier="gate",
                       inputs={"topic": "${{ first.outputs.topic }}"}, next_nodes=["last"]),
        GraphNodeModel(node_name="VisibleLast", namespace=namespace, identifier="last",
                       inputs={"topic": "${{ gate.outputs.topic }}"}),
    ]


@dataclass
class SideUnderTest:
    server: Server
    spans: Callable[[], list[Span]]  # every span exported so far, wherever it went


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpHttpReceiver]:
    with OtlpHttpReceiver() as rx:
        yield rx


@pytest.fixture(params=["embedded", pytest.param("upstream", marks=pytest.mark.upstream)])
async def side(
    request: pytest.FixtureRequest, tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> AsyncIterator[SideUnderTest]:
    if request.param == "embedded":
        async with EmbeddedStateManager(server_side=True, tracer_provider=tracer_provider) as sm:
            yield SideUnderTest(EmbeddedServer(sm), lambda: flatten(span_exporter.get_finished_spans()))
        return
    require_upstream()
    rx: OtlpHttpReceiver = request.getfixturevalue("receiver")
    with side_server(rx) as server:
        yield SideUnderTest(
            UpstreamServerUnderTest(server), lambda: rx.spans() + flatten(span_exporter.get_finished_spans())
        )


async def trigger(server: Server, namespace: str, topic: str, sdk: bool) -> str:
    if sdk:
        return str((await server.client(namespace).trigger(GRAPH, store={"topic": topic}))["run_id"])
    url = f"{server.uri}/v0/namespace/{namespace}/graph/{GRAPH}/trigger"
    async with aiohttp.ClientSession() as session, session.post(
        url, json={"store": {"topic": topic}}, headers={"x-api-key": server.api_key}
    ) as answer:
        answer.raise_for_status()
        return str((await answer.json())["run_id"])


def missing_parents(spans: list[Span]) -> list[str]:
    present = {s.span_id for s in spans}
    return [f"{s.name} -> {s.parent_span_id}" for s in spans
            if s.parent_span_id is not None and s.parent_span_id not in present]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("sdk", [True, False], ids=["sdk-trigger", "http-trigger"])
async def test_the_root_is_out_from_the_first_second_and_nothing_dangles_meanwhile(
    side: SideUnderTest, instrumentor: ExosphereInstrumentor, sdk: bool
) -> None:
    server = side.server
    namespace = f"visible-{uuid.uuid4().hex[:8]}"
    topic = uuid.uuid4().hex
    async with server.runtime(namespace, NODES):
        await server.client(namespace).upsert_graph(
            GRAPH, graph_nodes(namespace), {}, store_config=StoreConfigModel(required_keys=["topic"])
        )  # type: ignore[arg-type]
        other_topics = [uuid.uuid4().hex for _ in range(OTHER_RUNS)]
        OPEN_GATES.update(other_topics)
        triggered = time.monotonic()
        run_id, *other_ids = await asyncio.gather(
            *(trigger(server, namespace, each, sdk) for each in [topic, *other_topics])
        )
        trace_id = format_trace_id(run_id)
        root_id = f"{run_span_id(run_id):016x}"
        roots = {format_trace_id(each): f"{run_span_id(each):016x}" for each in [run_id, *other_ids]}

        def run_spans() -> list[Span]:
            return [s for s in side.spans() if s.trace_id == trace_id]

        def others_now() -> tuple[int, int]:
            """Runs whose root is not out; spans of the other runs naming a parent not out yet."""
            spans = [s for s in side.spans() if s.trace_id in roots]
            out = {(s.trace_id, s.span_id) for s in spans}
            no_root = sum(1 for trace, root in roots.items() if (trace, root) not in out)
            waiting = sum(1 for s in spans if s.trace_id != trace_id and s.parent_span_id is not None
                          and (s.trace_id, s.parent_span_id) not in out)
            return no_root, waiting

        checks: list[tuple[int, bool, list[str], list[str]]] = []
        others_seen: list[tuple[int, int]] = []
        second = 0
        while True:
            second += 1
            await asyncio.sleep(max(0.0, triggered + second - time.monotonic()))
            spans = run_spans()
            checks.append((second, any(s.span_id == root_id and s.parent_span_id is None for s in spans),
                           missing_parents(spans), sorted(s.name for s in spans)))
            others_seen.append(others_now())
            if second == GATE_SECONDS:
                OPEN_GATES.add(topic)
            if second > GATE_SECONDS and await server.run_status(run_id) != "PENDING":
                break
            assert second < 60, "the run did not settle within a minute of opening its gate"
        states = await server.wait_for_run(run_id)
        deadline = time.monotonic() + 20
        while not any(s.name == f"settle {GRAPH}" for s in run_spans()) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)  # a duplicate, were there one, would be out by now
    OPEN_GATES.difference_update([topic, *other_topics])
    for (second, root_out, missing, names), (no_root, waiting) in zip(checks, others_seen, strict=True):
        print(f"\n[visibility {type(server).__name__} {'sdk' if sdk else 'http'}] {second} s: "
              f"root={'out' if root_out else 'MISSING'} missing_parents={missing} spans={names}; "
              f"of all {len(roots)} runs: roots not out {no_root}, other runs' spans whose parent "
              f"is not out yet {waiting}")
    report = check_runs(run_spans(), {run_id: [{"state_id": s.id} for s in states]}, GRAPH)
    print(f"[visibility] settled: {report.summary()}")
    assert [second for second, root_out, _, _ in checks if not root_out] == []
    assert [no_root for no_root, _ in others_seen] == [0] * len(checks)
    assert [(second, missing) for second, _, missing, _ in checks if missing] == []
    # While the gate was closed, the spans out were those of the run so far: the first node's.
    assert all("node first" in names for second, _, _, names in checks[1:GATE_SECONDS])
    assert report.problems[:5] == []
    assert report.placed == report.states == 3
    assert report.roots_per_run == report.outcomes_per_run == {1: 1} and report.outcomes_malformed == 0
    assert report.duplicate_span_ids == report.dangling_parents == report.dangling_links == 0
    assert report.executes == 3 and report.executes_misplaced == 0
