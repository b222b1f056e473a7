"""A state manager process killed with SIGKILL mid-load, or in the middle of its triggers, and started
again, on the REAL upstream server over SecantusDB with persistent storage (docs/state-manager-side.md,
section "When a process dies").

Two server processes on one database: the runtime polls the steady one; the 20 runs are triggered at
the other, which keeps the deploy stack's export delay (the SDK's 5 s). It is started again on the
same port and database. Every run must complete as one trace: every span the killed process had
claimed and not exported is emitted by a process that lives (its claim's lease passed), none twice.

Killed at a random moment, its claims are mostly final already (the sweep exports each pass's spans
before it confirms their claims). So in the second case its collector stalls (it accepts the export
and never answers): nothing the killed process claimed ever got out, every one of its claims is left
to the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
from exospherehost import StateManager
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exo_otel.core.ids import format_trace_id
from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from exo_otel.server.mongo_store import CLAIMS_COLLECTION
from exo_otel.server.sweeper import STALLED_TRIGGER_SECONDS
from helpers import upstream_graph as ug
from helpers.mongo_proxy import mongo_counting_proxy, target_of
from helpers.otlp_receiver import OtlpHttpReceiver
from helpers.trace_checks import check_runs, flatten
from helpers.upstream_harness.database import secantus_database
from helpers.upstream_harness.processes import Settings, UpstreamServer, start_uvicorn, stop, uvicorn_server
from helpers.upstream_harness.venvs import server_python
from helpers.upstream_side import (
    SIDE_PIP,
    LoadResult,
    assert_every_run_whole,
    graph_runtime,
    otel_env,
    post_trigger,
    run_states,
    spans_of,
    trigger_runs,
    wait_settled_saying_why,
)
from helpers.upstream_sm import require_upstream

pytestmark = pytest.mark.upstream

RUNS = 20
KILL_AFTER_S = 4.0  # into the load: within the killed process's 5 s export delay
SETTLE_S = 60 + 20.0 * RUNS
DEPLOY_EXPORT_DELAY_MS = "5000"  # the SDK's default, which the deploy stack keeps


@pytest.fixture
def receiver() -> Iterator[OtlpHttpReceiver]:
    with OtlpHttpReceiver() as rx:
        yield rx


@contextlib.contextmanager
def stalled_collector() -> Iterator[str]:
    """An OTLP/HTTP endpoint that accepts connections and requests and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(listener.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        for connection in held:
            connection.close()


def logged_total(pattern: str, *servers: UpstreamServer) -> int:
    """The sum of the numbers ``pattern``'s group matched in these servers' logs."""
    logs = "".join(server.log.read_text(errors="replace") for server in servers)
    return sum(int(n) for n in re.findall(pattern, logs))


def server_spans(receiver: OtlpHttpReceiver, run_ids: list[str]) -> int:
    """The runs' spans the server emits (roots, outcomes, node spans) that reached the collector."""
    traces = {format_trace_id(run_id) for run_id in run_ids}
    return sum(
        1 for s in receiver.spans()
        if s.trace_id in traces and s.name.split(" ")[0] in ("run", "settle", "node")
    )


async def until_server_spans(receiver: OtlpHttpReceiver, run_ids: list[str], deadline: float) -> None:
    """Until every server span of these runs of the test graph is in, or the deadline."""
    wanted = len(run_ids) * (ug.STATES_PER_RUN + 2)  # root, outcome, a node span per state
    while server_spans(receiver, run_ids) < wanted and time.monotonic() < deadline:
        await asyncio.sleep(0.5)


# In `make test-upstream`, not CI: in one CI run the stalled case left 1 of 20 runs unsettled on
# upstream's side after 460 s (the spans of the 19 others were whole). Seen again (issue 24, the
# answering case): the run had start, split x3, work SUCCESS, SUCCESS, PRUNED and no merge, with
# nothing pending: upstream's prune-unites race (upstream_prune_race), not exo_otel's.
@pytest.mark.long_load
@pytest.mark.timeout(2400)
@pytest.mark.parametrize("collector", ["answering", "stalled"])
async def test_a_server_killed_and_restarted_mid_load_loses_and_duplicates_no_span(
    tmp_path: Path,
    receiver: OtlpHttpReceiver,
    span_exporter: InMemorySpanExporter,
    instrumentor: ExosphereInstrumentor,
    collector: str,
) -> None:
    require_upstream()
    env = {**otel_env(receiver), "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "process"}
    victim_env = {**env, "OTEL_BSP_SCHEDULE_DELAY": DEPLOY_EXPORT_DELAY_MS}
    stack_of_collectors = contextlib.ExitStack()
    if collector == "stalled":
        victim_env["OTEL_EXPORTER_OTLP_ENDPOINT"] = stack_of_collectors.enter_context(stalled_collector())
    pip = SIDE_PIP.split()
    namespace = f"restart-{uuid.uuid4().hex[:8]}"
    with contextlib.ExitStack() as stack:
        database = stack.enter_context(secantus_database(tmp_path / "secantus"))
        settings = Settings(mongo_uri=database.uri)
        steady = stack.enter_context(uvicorn_server(settings, instrument=True, pip=pip, **env))
        victim = start_uvicorn(settings, instrument=True, pip=pip, **victim_env)
        port = urlsplit(victim.uri).port
        try:
            async with graph_runtime(steady.uri, steady.api_key, namespace) as (_proxy, _client):
                started = time.monotonic()
                client = StateManager(namespace=namespace, state_manager_uri=victim.uri, key=steady.api_key)
                run_ids = await trigger_runs(client, victim.uri, steady.api_key, namespace, RUNS, sdk=False)
                await asyncio.sleep(max(0.0, KILL_AFTER_S - (time.monotonic() - started)))
                killed_pid = victim.pid
                stop(victim.process, signal.SIGKILL)
                killed_at = time.monotonic()
                victim = start_uvicorn(settings, instrument=True, pip=pip, port=port, **env)
                restarted_s = time.monotonic() - killed_at
                await wait_settled_saying_why(steady.uri, steady.api_key, namespace, run_ids, SETTLE_S)
                settled_s = time.monotonic() - started
                traces = {format_trace_id(run_id) for run_id in run_ids}
                wanted = RUNS * (ug.STATES_PER_RUN + 2)  # root, outcome, a node span per state
                # A dead process's claims are taken over once their lease (60 s) passed, at a sweep's
                # background check (every 10 s).
                await until_server_spans(receiver, run_ids, time.monotonic() + 150)
                complete_s = time.monotonic() - started
                await asyncio.sleep(2.0)  # duplicates, if any, would be out by now
        finally:
            stop(victim.process)
            stack_of_collectors.close()
        states_by_run = await run_states(steady.uri, steady.api_key, namespace, run_ids)
    spans = spans_of(run_ids, receiver.spans(), flatten(span_exporter.get_finished_spans()))
    report = check_runs(spans, states_by_run, ug.GRAPH)
    from_killed = sum(1 for s in receiver.spans() if s.trace_id in traces and s.process_pid == killed_pid)
    taken_over = logged_total(r"exo_otel: emitted (\d+) span\(s\) another", steady, victim)
    print(
        f"\n[killed and restarted, collector {collector}] runs={RUNS} {report.summary()}\n"
        f"  killed {KILL_AFTER_S:.0f} s into the load, restarted in {restarted_s:.1f} s; settled after "
        f"{settled_s:.1f} s; every server span out after {complete_s:.1f} s; spans the killed process "
        f"exported before it died: {from_killed}, emitted by the others after its claims' lease: "
        f"{taken_over}; server spans {server_spans(receiver, run_ids)} of {wanted}"
    )
    if collector == "stalled":  # none of its spans got out: the others emitted every one it claimed
        assert from_killed == 0 and taken_over >= RUNS  # its roots at least
    result = LoadResult(run_ids, report, {}, settled_s, complete_s - settled_s)
    assert_every_run_whole(result, RUNS, killed=True)


UNREADY_RUNS = Path(__file__).resolve().parents[1] / "helpers" / "unready_runs.py"
TRIGGERS = 20
KILL_AT_ROOT_CLAIM = 10  # the victim dies as its 10th trigger, its states created, claims its root


async def post_triggers(uri: str, api_key: str, namespace: str, n: int) -> list[str | BaseException]:
    """``n`` plain-HTTP triggers at once; each one's run id, or what its request raised."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        posts = (post_trigger(session, uri, api_key, namespace) for _ in range(n))
        return list(await asyncio.gather(*posts, return_exceptions=True))


async def unready_runs(uri: str, database: str) -> dict[str, bool]:
    """The runs whose trigger began and never completed, each with whether a state of it exists."""
    found = await asyncio.create_subprocess_exec(
        str(server_python(SIDE_PIP.split())), str(UNREADY_RUNS), uri, database, stdout=asyncio.subprocess.PIPE
    )
    return dict(json.loads((await found.communicate())[0]))


class KillAtRootClaim:
    """A `hold` for the database proxy: SIGKILLs the process at its ``n``-th root claim, withheld: that
    trigger's states are created, its end never comes (the run kept and not ready)."""

    def __init__(self, n: int) -> None:
        self.n, self.seen, self.pid = n, 0, 0
        self.killed_at = 0.0

    def __call__(self, message: bytes) -> bool:
        if target_of(message) != ("insert", CLAIMS_COLLECTION) or b"root:" not in message:
            return False
        self.seen += 1
        if self.seen == self.n and self.pid:
            os.kill(self.pid, signal.SIGKILL)
            self.killed_at = time.monotonic()
        return self.seen >= self.n


# A root the killed process exported before its claim was confirmed comes again from a live process after
# the lease, as the same span (its end kept with the claim): seen in 1 of 3 runs before the end was kept,
# as 2 roots that differed in their end (docs/state-manager-side.md, "Exactly once").
@pytest.mark.timeout(900)
async def test_a_server_killed_in_the_middle_of_its_triggers_leaves_every_run_whole(
    tmp_path: Path,
    receiver: OtlpHttpReceiver,
    span_exporter: InMemorySpanExporter,
    instrumentor: ExosphereInstrumentor,
) -> None:
    """The process handling 20 triggers at once is killed as one of them, its states created, claims
    its run's root (its database connection stops it there: the request never reaches the database),
    the others in flight wherever they are. Every run whose states exist must still become one whole
    trace, its root included (emitted by a live process once the trigger is taken for dead, 60 s after
    it began); a run none of whose states was created leaves no record behind."""
    require_upstream()
    env = {**otel_env(receiver), "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "process"}
    pip = SIDE_PIP.split()
    namespace = f"killed-trigger-{uuid.uuid4().hex[:8]}"
    kill = KillAtRootClaim(KILL_AT_ROOT_CLAIM)
    with contextlib.ExitStack() as stack:
        database = stack.enter_context(secantus_database(tmp_path / "secantus"))
        settings = Settings(mongo_uri=database.uri)
        proxy = stack.enter_context(mongo_counting_proxy(database.uri, hold=kill))
        steady = stack.enter_context(uvicorn_server(settings, instrument=True, pip=pip, **env))
        through_proxy = dataclasses.replace(settings, mongo_uri=proxy.uri)
        victim = start_uvicorn(through_proxy, instrument=True, pip=pip, **env)
        port = urlsplit(victim.uri).port
        kill.pid = victim.pid
        try:
            async with graph_runtime(steady.uri, steady.api_key, namespace):
                started = time.monotonic()
                answers = await post_triggers(victim.uri, steady.api_key, namespace, TRIGGERS)
                assert kill.killed_at, f"the victim made {kill.seen} root claims"
                victim.process.wait(10)
                victim = start_uvicorn(settings, instrument=True, pip=pip, port=port, **env)
                answered = [a for a in answers if isinstance(a, str)]
                left = await unready_runs(database.uri, settings.database_name)
                run_ids = answered + [run for run, has_states in left.items() if has_states]
                await wait_settled_saying_why(steady.uri, steady.api_key, namespace, run_ids, SETTLE_S)
                settled_s = time.monotonic() - started
                deadline = time.monotonic() + STALLED_TRIGGER_SECONDS + 90
                await until_server_spans(receiver, run_ids, deadline)
                while (still_unready := await unready_runs(database.uri, settings.database_name)) and (
                    time.monotonic() < deadline
                ):
                    await asyncio.sleep(2.0)
                complete_s = time.monotonic() - started
                await asyncio.sleep(2.0)  # duplicates, if any, would be out by now
        finally:
            stop(victim.process)
        states_by_run = await run_states(steady.uri, steady.api_key, namespace, run_ids)
    spans = spans_of(run_ids, receiver.spans(), flatten(span_exporter.get_finished_spans()))
    report = check_runs(spans, states_by_run, ug.GRAPH)
    completed = logged_total(r"exo_otel: completed (\d+) run\(s\) whose trigger", steady, victim)
    print(
        f"\n[killed mid-trigger] {TRIGGERS} triggers at once, the process killed at its root claim "
        f"{KILL_AT_ROOT_CLAIM}, {kill.killed_at - started:.1f} s in: {len(answered)} answered, {len(left)} "
        f"in flight ({sum(left.values())} with their states, {len(left) - sum(left.values())} without); "
        f"{len(run_ids)} runs settled after {settled_s:.1f} s, every server span out after "
        f"{complete_s:.1f} s; completed by a live process: {completed}; {report.summary()}"
    )
    assert still_unready == {}  # the runs with states completed, those without forgotten
    assert completed == sum(left.values()) >= 1
    result = LoadResult(run_ids, report, {}, settled_s, complete_s - settled_s)
    assert_every_run_whole(result, len(run_ids), killed=True)
