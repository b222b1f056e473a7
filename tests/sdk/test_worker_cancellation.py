"""A worker cancelled 0, 1, 5, 20 or 100 ms after a state reached its queue: what becomes of the
state is the same with exo_otel's SDK side loaded as without it, run by run.

The real SDK drives everything over real HTTP against the embedded state manager (no state manager
side, so runtimes find runs through the run APIs: the set-up in which a worker may wait for a
placement). Each attempt triggers a run of a one-node graph, polls it with the runtime's own
``_enqueue_call`` and puts the answer's state in the runtime's queue as the runtime's poll loop does,
with one worker waiting on the queue; after the delay the worker is cancelled. The state is then
*executed* (the node's ``execute()`` was entered), *left* (still in the queue) or *dropped* (taken off
the queue and never executed). Plain: 0 ms leaves it (the worker had not run yet); later, the worker
is inside the node. Instrumented the counts must be the same, and nothing dropped: exo_otel may wait
for a placement only where that changes nothing a cancellation can see (a worker cancelled while it
waits runs the node, and the cancellation lands at its next await).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest
from exospherehost import BaseNode, GraphNodeModel, Runtime
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel

from exo_otel.core.ids import trace_id_for_run
from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from exo_otel_demo.embedded import EmbeddedStateManager
from helpers.otel_fixtures import instrumented
from helpers.sm_fixtures import sdk_state_manager

NAMESPACE = "cancel"
GRAPH = "one-node"
DELAYS_MS = (0, 1, 5, 20, 100)
ATTEMPTS = 100
ENTERED: set[str] = set()


class Sleepy(BaseNode):
    class Inputs(BaseModel):
        tag: str

    class Outputs(BaseModel):
        tag: str

    async def execute(self) -> BaseNode.Outputs:
        ENTERED.add(self.inputs.tag)
        await asyncio.sleep(5)  # the cancellation lands here
        return self.Outputs(tag=self.inputs.tag)


async def attempts(sm: EmbeddedStateManager, delay_ms: int, runs: dict[str, str]) -> dict[str, int]:
    """``ATTEMPTS`` cancellations at ``delay_ms``; counts of executed, left and dropped states."""
    runtime = Runtime(namespace=NAMESPACE, name="cancel-runtime", nodes=[Sleepy], state_manager_uri=sm.uri,
                      key=sm.api_key, workers=1, batch_size=1)  # type: ignore[arg-type]
    await runtime._register()
    client = sdk_state_manager(sm, NAMESPACE)
    await client.upsert_graph(GRAPH, [GraphNodeModel(node_name="Sleepy", namespace=NAMESPACE,
                                                     identifier="sleepy", inputs={"tag": "none"})], {})
    queue = runtime._state_queue
    counts = {"executed": 0, "left": 0, "dropped": 0}
    for _ in range(ATTEMPTS):
        tag = uuid.uuid4().hex
        worker = asyncio.create_task(runtime._worker(0))
        await asyncio.sleep(0)  # the worker waits on the empty queue
        runs[tag] = (await client.trigger(GRAPH, inputs={"tag": tag}))["run_id"]
        answer = await runtime._enqueue_call()  # the runtime's poll, as its loop makes it ...
        (state,) = answer["states"]
        await queue.put(state)  # ... and what the loop does with the answer
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
        left = queue.qsize()
        while not queue.empty():
            queue.get_nowait()
        if tag in ENTERED:
            counts["executed"] += 1
        elif left:
            counts["left"] += 1
        else:
            counts["dropped"] += 1
    return counts


@pytest.mark.timeout(600)
async def test_cancelled_worker_leaves_or_executes_states_as_without_exo_otel(
    tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> None:
    results: dict[str, dict[int, dict[str, int]]] = {"plain": {}, "instrumented": {}}
    placed: dict[int, int] = {}
    for delay_ms in DELAYS_MS:
        async with EmbeddedStateManager() as sm:
            results["plain"][delay_ms] = await attempts(sm, delay_ms, {})
        async with EmbeddedStateManager() as sm:
            instrumentor = ExosphereInstrumentor()
            instrumentor.instrument(tracer_provider=tracer_provider)  # the defaults: run APIs, 250 ms
            runs: dict[str, str] = {}
            try:
                results["instrumented"][delay_ms] = await attempts(sm, delay_ms, runs)
            finally:
                instrumentor.uninstrument()
        traces = {trace_id_for_run(run_id) for run_id in runs.values()}
        placed[delay_ms] = sum(1 for span in span_exporter.get_finished_spans()
                               if span.name.startswith("execute ") and span.context.trace_id in traces)
        span_exporter.clear()
    print(f"\n{ATTEMPTS} attempts per delay: executed / left in the queue / dropped")
    print("| cancelled after | plain | instrumented | instrumented: execute spans in the run's trace |")
    print("|---|---|---|---|")
    for delay_ms in DELAYS_MS:
        plain, instr = results["plain"][delay_ms], results["instrumented"][delay_ms]
        print(f"| {delay_ms} ms | {plain['executed']} / {plain['left']} / {plain['dropped']} "
              f"| {instr['executed']} / {instr['left']} / {instr['dropped']} | {placed[delay_ms]} |")
    assert results["instrumented"] == results["plain"]
    assert all(counts["dropped"] == 0 for mode in results.values() for counts in mode.values())
    # The instrumented worker did wait for placements (else this would show nothing): given time,
    # states were placed in their run's trace, which a worker that never waits cannot do here.
    assert placed[100] >= ATTEMPTS * 0.9


async def timed_out_attempts(sm: EmbeddedStateManager, timeout_ms: int, count: int) -> dict[str, int]:
    """Workers run under ``asyncio.timeout``: what they raise, and whether the node ran."""
    runtime = Runtime(namespace=NAMESPACE, name="timeout-runtime", nodes=[Sleepy], state_manager_uri=sm.uri,
                      key=sm.api_key, workers=1, batch_size=1)  # type: ignore[arg-type]
    await runtime._register()
    client = sdk_state_manager(sm, NAMESPACE)
    await client.upsert_graph(GRAPH, [GraphNodeModel(node_name="Sleepy", namespace=NAMESPACE,
                                                     identifier="sleepy", inputs={"tag": "none"})], {})
    outcomes: dict[str, int] = {}

    async def bounded() -> None:
        async with asyncio.timeout(timeout_ms / 1000):
            await runtime._worker(0)

    for _ in range(count):
        tag = uuid.uuid4().hex
        await client.trigger(GRAPH, inputs={"tag": tag})
        answer = await runtime._enqueue_call()
        worker = asyncio.create_task(bounded())
        await asyncio.sleep(0)  # the worker waits on the empty queue, its timeout running
        for state in answer["states"]:
            await runtime._state_queue.put(state)
        try:
            await worker
            raised = "nothing"
        except BaseException as exc:
            raised = type(exc).__name__
        key = f"{raised}, node {'ran' if tag in ENTERED else 'did not run'}"
        outcomes[key] = outcomes.get(key, 0) + 1
    return outcomes


@pytest.mark.timeout(300)
async def test_a_timeout_around_a_worker_sees_what_it_would_without_exo_otel(
    tracer_provider: TracerProvider,
) -> None:
    """Cancelled while exo_otel waits for a placement, the worker's cancellation is requested again;
    the count of requests stays one, so ``asyncio.timeout`` still turns it into TimeoutError."""
    async with EmbeddedStateManager() as sm:
        plain = await timed_out_attempts(sm, 3, 30)
    async with EmbeddedStateManager() as sm:
        with instrumented(tracer_provider=tracer_provider):
            traced = await timed_out_attempts(sm, 3, 30)
    print(f"\nplain {plain}\ninstrumented {traced}")
    assert plain == traced == {"TimeoutError, node ran": 30}
