"""The state manager side in the REAL upstream state manager, at 1, 10, 50 and 200 runs in flight.

The server runs as the deploy stack starts it: under the launcher's auto-initialisation, which
loads the ``exosphere_state_manager`` entry point. Runs are started through the instrumented SDK
and by plain HTTP POST; every state of every run must have its node span in its run's trace.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from helpers.otlp_receiver import OtlpHttpReceiver
from helpers.upstream_side import assert_every_run_whole, run_load, side_server
from helpers.upstream_sm import UpstreamServer, require_upstream

pytestmark = pytest.mark.upstream


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpHttpReceiver]:
    with OtlpHttpReceiver() as rx:
        yield rx


@pytest.fixture(scope="module")
def server(receiver: OtlpHttpReceiver) -> Iterator[UpstreamServer]:
    require_upstream()
    with side_server(receiver) as running:
        yield running


@pytest.mark.timeout(2400)
@pytest.mark.parametrize("sdk", [True, False], ids=["sdk-trigger", "http-trigger"])
@pytest.mark.parametrize("runs", [1, 10, 50, pytest.param(200, marks=pytest.mark.long_load)])
async def test_every_state_in_its_runs_trace(
    server: UpstreamServer,
    receiver: OtlpHttpReceiver,
    span_exporter: InMemorySpanExporter,
    instrumentor: ExosphereInstrumentor,
    runs: int,
    sdk: bool,
) -> None:
    result = await run_load(server, receiver, span_exporter, runs, sdk)
    report = result.report
    print(
        f"\n[upstream side] runs={runs} trigger={'sdk' if sdk else 'http'} {report.summary()} "
        f"runtime run-API calls={result.proxy_calls.get('run_api', 0)} "
        f"polls={result.proxy_calls.get('enqueue', 0)} settled in {result.settle_seconds:.1f}s, "
        f"spans complete {result.spans_seconds:.1f}s later"
    )
    assert_every_run_whole(result, runs)
