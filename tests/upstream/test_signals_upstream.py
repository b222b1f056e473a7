"""SIGTERM on an instrumented runtime polling the real upstream state manager (skipped without it)."""

from __future__ import annotations

import signal

import pytest

from helpers.otlp_receiver import OtlpHttpReceiver
from helpers.signalled_process import check_sigterm_telemetry, start, stop
from helpers.upstream_sm import UpstreamServer, state_histories

pytestmark = pytest.mark.upstream


async def test_sigterm_against_the_real_state_manager(upstream_sm: UpstreamServer) -> None:
    server = (upstream_sm.uri, upstream_sm.api_key)
    with OtlpHttpReceiver() as receiver:
        process, runs = start(receiver.endpoint, server=server)
        status, seconds, err = stop(process, signal.SIGTERM)
        print(f"\nSIGTERM (upstream server): exit status {status} after {seconds:.2f} s")
        assert status == -signal.SIGTERM, err
        check_sigterm_telemetry(receiver, runs)
    # What the server saw is what it sees without exo_otel: completed states done, the two in
    # flight still queued (nobody reported them).
    for run_id in runs["completed"]:
        [state] = await state_histories(upstream_sm.uri, run_id)
        assert [h["status"] for h in state["history"]] == ["CREATED", "QUEUED", "EXECUTED", "SUCCESS"]
    for run_id in runs["in_flight"]:
        [state] = await state_histories(upstream_sm.uri, run_id)
        assert [h["status"] for h in state["history"]] == ["CREATED", "QUEUED"]
