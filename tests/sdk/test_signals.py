"""SIGTERM and SIGINT on a runtime under the launcher: spans flushed, in-flight states ended, same exit."""

from __future__ import annotations

import contextlib
import signal
import socket
from collections.abc import Iterator

import pytest

from exo_otel import format_trace_id
from helpers.otel_fixtures import instrumented
from helpers.otlp_receiver import OtlpHttpReceiver
from helpers.signal_runtime import COMPLETED
from helpers.signalled_process import check_sigterm_telemetry, is_state_span, start, stop


@contextlib.contextmanager
def unanswering_collector() -> Iterator[str]:
    """A port that accepts connections and never answers: a collector that is down the worst way."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_sigterm_flushes_completed_and_in_flight_spans_and_exits_as_without_exo_otel() -> None:
    with OtlpHttpReceiver() as receiver:
        process, runs = start(receiver.endpoint)
        status, seconds, err = stop(process, signal.SIGTERM)
        print(f"\nSIGTERM under the launcher: exit status {status}, gone after {seconds:.2f} s")
        assert status == -signal.SIGTERM, err
        count = check_sigterm_telemetry(receiver, runs)
    print(f"{COMPLETED} completed and 2 in-flight states: {count} spans arrived")


def test_sigterm_with_opentelemetry_set_up_by_hand() -> None:
    with OtlpHttpReceiver() as receiver:
        process, runs = start(receiver.endpoint, launcher=False, by_hand=True)
        status, seconds, err = stop(process, signal.SIGTERM)
        print(f"\nSIGTERM, set up by hand: exit status {status}, gone after {seconds:.2f} s")
        assert status == -signal.SIGTERM, err
        check_sigterm_telemetry(receiver, runs)


def test_sigterm_without_instrumentation_exits_the_same_way() -> None:
    with OtlpHttpReceiver() as receiver:
        process, _runs = start(receiver.endpoint, launcher=False)
        status, _seconds, err = stop(process, signal.SIGTERM)
    assert status == -signal.SIGTERM, err


@pytest.mark.parametrize("launcher", [True, False], ids=["launcher", "plain"])
def test_sigint_exits_the_same_way_with_or_without_exo_otel(launcher: bool) -> None:
    with OtlpHttpReceiver() as receiver:
        process, runs = start(receiver.endpoint, launcher=launcher)
        status, seconds, err = stop(process, signal.SIGINT)
        print(f"\nSIGINT ({'launcher' if launcher else 'plain'}): exit status {status} after {seconds:.2f} s")
        assert status == -signal.SIGINT, err
        assert "KeyboardInterrupt" in err
        if launcher:
            receiver.wait_for(lambda rx: len(rx.spans()) >= 2 * (COMPLETED + 2))
            spans = receiver.spans()
            for run_id in runs["in_flight"]:
                trace_id = format_trace_id(run_id)
                state_spans = [s for s in spans if s.trace_id == trace_id and is_state_span(s.name)]
                assert len(state_spans) == 2
                assert {s.attributes["exosphere.state.outcome"] for s in state_spans} == {"interrupted"}


@pytest.mark.parametrize("collector", ["refusing", "unanswering"])
def test_with_the_collector_down_sigterm_ends_the_process_within_the_bound(collector: str) -> None:
    with contextlib.ExitStack() as stack:
        endpoint = closed_port() if collector == "refusing" else stack.enter_context(unanswering_collector())
        timings = {}
        for disabled in ("exospherehost", ""):
            process, _runs = start(endpoint, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=disabled)
            status, seconds, err = stop(process, signal.SIGTERM)
            assert status == -signal.SIGTERM, err
            timings["without exo_otel" if disabled else "with exo_otel"] = seconds
    measured = ", ".join(f"{k} {v:.2f} s" for k, v in timings.items())
    print(f"\ncollector {collector}: SIGTERM to exit {measured}")
    from exo_otel.sdk.shutdown import FLUSH_BOUND_S

    # The stated bound: FLUSH_BOUND_S in exo_otel, plus the interpreter's own exit.
    assert timings["with exo_otel"] < FLUSH_BOUND_S + 2.0


def test_handlers_go_only_where_the_default_would_kill_and_uninstrument_restores_them() -> None:

    def own_handler(signum: int, frame: object) -> None:
        pass

    previous = signal.signal(signal.SIGINT, own_handler)
    try:
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        with instrumented():
            assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # exo_otel's
            assert signal.getsignal(signal.SIGINT) is own_handler  # the application's: left alone
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) is own_handler
    finally:
        signal.signal(signal.SIGINT, previous)
