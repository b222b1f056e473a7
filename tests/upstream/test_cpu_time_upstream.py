"""A run's CPU time on the REAL upstream state manager with the side: the sum of its executions' CPU
times over two runtime processes, retries, requeues and prunes included (docs/trace-model.md, section
"CPU time").

Ten runs of the 11-state test graph (a retry, a requeue and a prune in each) execute in two runtime
processes under the launcher; each run's ``settle`` span must carry the sum of its execute spans'
``exosphere.execution.cpu_time`` and their number, and the server's ``exosphere.run.cpu_time``
histogram the same, with exemplars naming the runs' traces.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from exospherehost import StateManager

from exo_otel.core import attributes as attr
from exo_otel.core.ids import format_trace_id
from helpers import upstream_graph as ug
from helpers.otlp_receiver import MetricPoint, OtlpHttpReceiver, Span
from helpers.proc_runtime import launch, otel_env, print_logs, stop
from helpers.upstream_side import side_server, trigger_runs, upsert_when_registered, wait_settled
from helpers.upstream_sm import require_upstream

pytestmark = pytest.mark.upstream

RUNS = 10
RUNTIMES = ("runtime-a", "runtime-b")
SERVER_METRICS = {"OTEL_METRICS_EXPORTER": "otlp", "OTEL_METRIC_EXPORT_INTERVAL": "500"}


@pytest.fixture
def receiver() -> Iterator[OtlpHttpReceiver]:
    with OtlpHttpReceiver() as rx:
        yield rx


@pytest.mark.timeout(600)
async def test_each_runs_cpu_time_is_the_sum_of_its_executions_over_two_runtime_processes(
    tmp_path: Path, receiver: OtlpHttpReceiver
) -> None:
    require_upstream()
    namespace = f"cpu-up-{uuid.uuid4().hex[:8]}"
    with side_server(receiver, **SERVER_METRICS) as server:
        processes = []
        try:
            for name in RUNTIMES:
                args = ["--uri", server.uri, f"--key={server.api_key}", "--namespace", namespace,
                        "--nodes", ",".join(n.__name__ for n in ug.NODES), "--name", name, "--workers", "8"]
                env = otel_env(receiver.endpoint, name, OTEL_PYTHON_EXOSPHERE_CPU_TIME="true")
                processes.append(launch("proc_runtime.py", args, env, tmp_path / f"{name}.log"))
            client = StateManager(namespace=namespace, state_manager_uri=server.uri, key=server.api_key)
            await upsert_when_registered(client, namespace)
            runs = await trigger_runs(client, server.uri, server.api_key, namespace, RUNS, sdk=False)
            await wait_settled(server.uri, server.api_key, namespace, runs, timeout=300)
        finally:
            for process in processes:
                stop(process)  # they flush their spans as they exit
            print_logs(tmp_path)
        traces = {format_trace_id(run_id) for run_id in runs}
        settles = receiver.wait_for(lambda rx: _settles(rx, traces), timeout=30)
        # Cumulative points, exported every 500 ms: the latest of each series, once it counts every run.
        points = receiver.wait_for(lambda rx: _latest_run_cpu_points(rx, RUNS), timeout=30)

    executes = [s for s in receiver.spans() if s.trace_id in traces and s.name.startswith("execute ")]
    cpu_by_run: dict[str, list[float]] = defaultdict(list)
    for span in executes:
        cpu_by_run[span.trace_id].append(span.attributes[attr.EXECUTION_CPU_TIME])
    services = {s.service_name for s in executes}
    total = 0.0
    for settle in settles:
        values = cpu_by_run[settle.trace_id]
        run_cpu = settle.attributes[attr.RUN_CPU_TIME]
        total += run_cpu
        print(f"run {settle.trace_id}: {len(values)} executions, execute spans {sum(values) * 1000:.3f} ms, "
              f"settle span {run_cpu * 1000:.3f} ms over {settle.attributes[attr.RUN_EXECUTIONS]}")
        assert settle.attributes[attr.RUN_EXECUTIONS] == len(values)
        assert run_cpu == pytest.approx(sum(values), rel=0.01)
    assert services == set(RUNTIMES)
    # Retries are in every run's sum: its flaky state failed and a retry executed (each runtime process
    # counts attempts on its own, so a retry taken by the other one may fail once more).
    flaky = Counter(s.trace_id for s in executes if s.name == "execute Flaky")
    assert set(flaky) == traces and min(flaky.values()) >= 2
    # The last export of the cumulative histogram: every run counted once, with the same sum.
    count = sum(p.value or 0 for p in points)
    assert count == RUNS
    assert sum(p.total or 0 for p in points) == pytest.approx(total, rel=1e-9)
    exemplars = {t for p in receiver.metric_points() if p.name == "exosphere.run.cpu_time"
                 for t in p.exemplar_trace_ids}
    assert exemplars and exemplars <= traces


def _settles(receiver: OtlpHttpReceiver, traces: set[str]) -> list[Span] | None:
    found = [s for s in receiver.spans() if s.trace_id in traces and s.name.startswith("settle ")]
    return found if len(found) == len(traces) else None


def _latest_run_cpu_points(receiver: OtlpHttpReceiver, runs: int) -> list[MetricPoint] | None:
    latest: dict[tuple[tuple[str, object], ...], MetricPoint] = {}
    for point in receiver.metric_points():
        if point.name == "exosphere.run.cpu_time":
            latest[tuple(sorted(point.attributes.items()))] = point
    return list(latest.values()) if sum(p.value or 0 for p in latest.values()) == runs else None
