"""Placement under load: N runs of the placement graph in flight, one instrumented runtime finding their
runs through the run APIs only (no run context in the enqueue answer), and what its traces look like.

Used by the tests (embedded state manager in CI, the real upstream one in the upstream suite) and by
``benchmarks/placement_levels.py``. The runtime talks to the state manager through a counting proxy, so
the run API calls it makes are counted; the harness's own calls go to the server directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from exospherehost import Runtime, StateManager
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exo_otel.core.ids import state_span_id, trace_id_for_run
from helpers import upstream_graph as pg
from helpers.http_proxy import CountingProxy, RunApiMode, counting_proxy
from helpers.trace_checks import flatten, integrity


@dataclass
class LoadResult:
    """What one load level gave."""

    runs: int
    states: int
    placed: int
    spanless: int
    executions: int
    expected_executions: int
    states_executed_twice: int
    """Attempts beyond each state's first: one per run is expected (the re-enqueued work state)."""
    dangling_parents: int
    links: int
    """Links from node spans to upstream states' spans (10 per run when every one is made)."""
    missing_links: int
    duplicate_span_ids: int
    run_api_calls: int
    pages: int
    polls: int
    polls_with_states: int
    seconds: float
    run_api_latency_s: float | None = None
    """The lookup's moving average of a run API call's duration at the end."""

    @property
    def placed_ratio(self) -> float:
        return self.placed / self.states if self.states else 0.0

    def line(self, label: str = "") -> str:
        return (
            f"{label}runs={self.runs:4d} states={self.states:5d} placed={self.placed_ratio:7.2%} "
            f"spanless={self.spanless} dangling_parents={self.dangling_parents} "
            f"links={self.links}/{10 * self.runs} missing_links={self.missing_links} "
            f"duplicate_span_ids={self.duplicate_span_ids} "
            f"executions={self.executions}/{self.expected_executions} "
            f"repeats={self.states_executed_twice}/{self.runs} "
            f"run_api_calls={self.run_api_calls} (pages {self.pages}) "
            f"per_state={self.run_api_calls / max(1, self.states):.2f} "
            f"per_poll={self.run_api_calls / max(1, self.polls):.2f} "
            f"per_poll_with_states={self.run_api_calls / max(1, self.polls_with_states):.2f} "
            f"seconds={self.seconds:.1f} run_api_latency_ms="
            f"{'-' if self.run_api_latency_s is None else f'{self.run_api_latency_s * 1000:.0f}'}"
        )


async def _get(session: aiohttp.ClientSession, base: str, key: str, path: str) -> Any:
    async with session.get(f"{base}/{path}", headers={"x-api-key": key}) as response:
        response.raise_for_status()
        return await response.json()


@contextlib.asynccontextmanager
async def traced_runtime(
    proxy: CountingProxy, namespace: str, key: str, workers: int, batch_size: int, poll_interval: float
) -> AsyncIterator[Runtime]:
    """A runtime polling through ``proxy``; yielded once it has registered and polled."""
    runtime = Runtime(
        namespace=namespace, name="placement-runtime", nodes=list(pg.NODES), state_manager_uri=proxy.uri,
        key=key, workers=workers, batch_size=batch_size, poll_interval=poll_interval,  # type: ignore[arg-type]
    )
    task = runtime.start()
    assert task is not None
    try:
        deadline = time.monotonic() + 30
        while proxy.calls["enqueue"] == 0:
            if task.done():
                task.result()
            assert time.monotonic() < deadline, "the runtime never polled"
            await asyncio.sleep(0.02)
        yield runtime
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def run_load(
    uri: str,
    key: str,
    runs: int,
    exporter: InMemorySpanExporter,
    *,
    run_api: RunApiMode = "pass",
    hang_s: float = 5.0,
    workers: int = 8,
    batch_size: int = 16,
    poll_interval: float = 0.05,
    timeout_s: float = 600.0,
) -> LoadResult:
    """Trigger ``runs`` runs at once (in a namespace of their own) and measure their traces once done."""
    namespace = f"placement-{uuid.uuid4().hex[:10]}"
    base = f"{uri}/v0/namespace/{namespace}"
    exporter.clear()
    client = StateManager(namespace=namespace, state_manager_uri=uri, key=key)
    async with (
        counting_proxy(uri, run_api, hang_s) as proxy,
        traced_runtime(proxy, namespace, key, workers, batch_size, poll_interval) as runtime,
        aiohttp.ClientSession() as session,
    ):
        await pg.upsert(client, namespace)
        started = time.monotonic()
        semaphore = asyncio.Semaphore(16)

        async def trigger() -> str:
            async with semaphore:
                answer = await client.trigger(pg.GRAPH, store={"topic": uuid.uuid4().hex})
                return str(answer["run_id"])

        run_ids = await asyncio.gather(*(trigger() for _ in range(runs)))
        await _wait_settled(session, base, key, set(run_ids), started + timeout_s)
        seconds = time.monotonic() - started
        graphs = {run_id: await _get(session, base, key, f"states/run/{run_id}/graph") for run_id in run_ids}
        calls, pages, polls, polls_with_states = (
            proxy.calls["run_api"], proxy.calls["runs_page"], proxy.calls["enqueue"],
            proxy.calls["enqueue_with_states"],
        )
        tracing = getattr(runtime, "_exo_otel_tracing", None)
        latency = tracing.run_api_placement().api.latency if tracing is not None else None
        state_ids = {node["id"] for graph in graphs.values() for node in graph["nodes"]}
        # Node spans end when the worker is done; copies when a later run graph names them.
        deadline = time.monotonic() + 10
        while _node_span_states(exporter.get_finished_spans()) < state_ids and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    result = measure(exporter.get_finished_spans(), graphs, calls, pages, polls, polls_with_states, seconds)
    result.run_api_latency_s = latency
    return result


async def _wait_settled(
    session: aiohttp.ClientSession, base: str, key: str, run_ids: set[str], deadline: float
) -> None:
    """Until every run has all its states and none pending (a run reads SUCCESS before its unites state)."""
    while True:
        page = await _get(session, base, key, f"runs/1/{len(run_ids) + 10}")
        done = {
            item["run_id"] for item in page["runs"]
            if item["pending_count"] == 0 and item["total_count"] >= pg.STATES_PER_RUN
        }
        if run_ids <= done:
            return
        assert time.monotonic() < deadline, f"{len(run_ids - done)} runs not settled in time"
        await asyncio.sleep(0.2)


def _node_span_states(spans: Sequence[ReadableSpan]) -> set[str]:
    return {
        str((s.attributes or {}).get("exosphere.state.id"))
        for s in spans if s.name.startswith("node ") and "exosphere.state.id" in (s.attributes or {})
    }


def measure(
    spans: Sequence[ReadableSpan],
    graphs: dict[str, Any],
    calls: int,
    pages: int,
    polls: int,
    polls_with_states: int,
    seconds: float,
) -> LoadResult:
    """Placement and reference integrity of the spans against what the server recorded."""
    references = integrity(flatten(spans))
    links = sum(len(s.links) for s in spans if s.name.startswith("node "))
    node_trace: dict[str, list[int]] = {}
    for span in spans:
        state_id = (span.attributes or {}).get("exosphere.state.id")
        if span.name.startswith("node ") and state_id is not None and span.context is not None:
            node_trace.setdefault(str(state_id), []).append(span.context.trace_id)
    states = placed = spanless = 0
    for run_id, graph in graphs.items():
        for node in graph["nodes"]:
            states += 1
            traces = node_trace.get(node["id"], [])
            spanless += not traces
            placed += traces == [trace_id_for_run(run_id)]
    # An execute span names its state by its parent: the state's node span id.
    state_of_span = {
        state_span_id(node["id"]): node["id"] for graph in graphs.values() for node in graph["nodes"]
    }
    attempts = Counter(
        state_of_span[s.parent.span_id] for s in spans
        if s.name.startswith("execute ") and s.parent is not None and s.parent.span_id in state_of_span
    )
    executions = sum(attempts.values())
    # A state executed more than twice (the requeue) would be a duplicate: counted as more than one.
    twice = sum(count - 1 for count in attempts.values() if count > 1)
    return LoadResult(
        runs=len(graphs), states=states, placed=placed, spanless=spanless, executions=executions,
        expected_executions=10 * len(graphs), states_executed_twice=twice,
        dangling_parents=references.dangling_parents,
        links=links, missing_links=references.dangling_links,
        duplicate_span_ids=references.duplicate_span_ids, run_api_calls=calls, pages=pages, polls=polls,
        polls_with_states=polls_with_states,
        seconds=seconds,
    )

