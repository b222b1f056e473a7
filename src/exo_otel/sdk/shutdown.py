"""A signal that would kill the process outright first ends the spans in flight and flushes, boundedly.

Under ``opentelemetry-instrument`` (or with providers set up by hand) spans wait in a batch
processor until exported. SIGTERM's default disposition kills the process with no Python code run
(no ``atexit``, no provider shutdown): every queued span is lost, and the states in flight never
end theirs. Where a signal has that default disposition, exo_otel handles it like this:

1. the states in flight end their spans: outcome ``interrupted``, ERROR, ``error.type`` the signal's
   name;
2. the tracer, meter and logger providers are flushed, for at most `FLUSH_BOUND_S` seconds in all
   (a helper thread; the exporters' own timeouts are longer, and a collector that is down must not
   hold the process);
3. the default disposition is put back and the signal sent again, so the process dies of it exactly
   as without exo_otel (exit status ``-SIGTERM``).

A signal that runs Python code anyway is left alone: SIGINT's ``KeyboardInterrupt``, or any handler
of the application's own (which may mean "drain", not "die"). Those unwind through the runtime's
worker tasks, whose wrapper ends the spans in flight, and the SDK providers flush at exit. Handlers
are installed only from the main thread (the only place Python allows it); uninstrument puts back
what was there, unless someone replaced exo_otel's handler since.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, Final

from opentelemetry import _logs

from exo_otel.sdk import inflight
from exo_otel.sdk.execution import interrupt

_logger = logging.getLogger(__name__)

FLUSH_BOUND_S: Final = 3.0
"""The most time a signal spends in exo_otel before the process goes on dying of it."""

HANDLED_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


class SignalFlush:
    """The handlers of one instrumentation: what they flush, and what they replaced."""

    def __init__(self, tracer_provider: object, meter_provider: object) -> None:
        self.providers = [tracer_provider, meter_provider]
        self.previous: dict[int, Any] = {}

    def install(self) -> None:
        """Handle every signal of `HANDLED_SIGNALS` that would kill the process with no Python code run."""
        if threading.current_thread() is not threading.main_thread():
            _logger.debug("exo_otel: not in the main thread; signals keep their handlers")
            return
        for signum in HANDLED_SIGNALS:
            if signal.getsignal(signum) is signal.SIG_DFL:
                self.previous[signum] = signal.signal(signum, self.handle)

    def uninstall(self) -> None:
        """Put the replaced dispositions back where exo_otel's handler is still the one installed."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self.previous.items():
            if signal.getsignal(signum) == self.handle:
                signal.signal(signum, previous)
        self.previous.clear()

    def handle(self, signum: int, frame: FrameType | None) -> None:
        """End, flush (bounded), then die of the signal as its default disposition says."""
        name = signal.Signals(signum).name
        worker = threading.Thread(
            target=self._end_and_flush, args=(name,), name="exo_otel-signal-flush", daemon=True
        )
        worker.start()
        # The main thread may hold a lock the flush needs: the bound also caps that.
        worker.join(FLUSH_BOUND_S)
        if worker.is_alive():
            _logger.warning("exo_otel: flush on %s took over %.1f s; exiting without it", name, FLUSH_BOUND_S)
        # Only a default disposition was ever replaced: put it back and die of the signal.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def _end_and_flush(self, signal_name: str) -> None:
        cause = inflight.SignalReceived(signal_name)
        for execution in inflight.snapshot():
            try:
                interrupt(execution, cause)
            except Exception:
                _logger.warning("exo_otel: ending an interrupted state's spans failed", exc_info=True)
        for provider in [*self.providers, _logs.get_logger_provider()]:
            flush: Callable[..., object] | None = getattr(provider, "force_flush", None)
            if flush is None:
                continue
            try:
                flush()
            except Exception:
                _logger.warning("exo_otel: flushing %r on %s failed", provider, signal_name, exc_info=True)
