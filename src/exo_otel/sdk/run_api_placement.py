"""Placing states in their runs' traces through the run APIs, in a background task with a call budget.

A poll only hands it the ids it did not place (no I/O in the poll); a worker that takes a
state not placed yet may wait a short, bounded time for it, and only while the run APIs answer in time
(`can_place_within`); a failed call ends every wait at once, and so does a placement with nothing left to
ask. The task and its HTTP session live only while there is work: idle for
``IDLE_CLOSE_S``, or cancelled (``close``, or the event loop shutting down), the task ends and closes
the session, so nothing is left open whether or not the runtime was started with ``Runtime.start()``.

One task per runtime spends at most ``calls_per_second`` calls on ``runs/{page}/{size}`` (newest
first, with each run's state counts) and ``states/run/{run_id}/graph`` (every state of a run: one
call places all of them), over one HTTP session. Order of work: run graphs asked for by fan-outs;
runs a runs page showed grown, the one grown longest ago first (a run that keeps growing goes back
in line, so it cannot starve the others); a new runs page when states arrived after the last one;
then pending runs not checked since the oldest waiting state arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

from opentelemetry.instrumentation.utils import suppress_http_instrumentation

from exo_otel.sdk.run_api import RunApiClient
from exo_otel.sdk.run_index import GraphNodes, RunIndex, read_graph, read_runs_page
from exo_otel.sdk.state_context import RunInfo

_logger = logging.getLogger(__name__)

GraphCallback = Callable[[str, GraphNodes], None]


@dataclass
class _Watch:
    """Call back with the first graph fetched after ``since`` of ``run_id`` (or holding ``state_id``)."""

    state_id: str
    run_id: str | None
    since: float
    expires_at: float
    callback: GraphCallback


class RunApiPlacement:
    """One runtime's placement through the run APIs. Not thread-safe: used from its event loop only."""

    DEFAULT_PAGE_SIZE: Final = 100
    DEFAULT_MAX_PAGES: Final = 10
    DEFAULT_TIMEOUT_S: Final = 2.0
    SCAN_INTERVAL_S: Final = 0.5
    MAX_CONCURRENT_CALLS: Final = 4
    """While grown runs wait, a new runs page is asked for at most this often."""
    WATCH_TTL_S: Final = 60.0
    MAX_WANTED: Final = 10_000
    IDLE_CLOSE_S: Final = 5.0
    """With nothing to ask for this long, the task ends and the HTTP session is closed."""

    def __init__(
        self,
        base_uri: str,
        namespace: str,
        api_key: str,
        *,
        version: str = "v0",
        calls_per_second: float = 50.0,
        page_size: int = DEFAULT_PAGE_SIZE,
        max_pages: int = DEFAULT_MAX_PAGES,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        index: RunIndex | None = None,
    ) -> None:
        """Set up an idle placement; its task starts on the first `want`, `wait` or `watch`.

        Args:
            base_uri: the state manager, e.g. ``http://127.0.0.1:8000`` (what the SDK is given).
            namespace: the namespace whose runs are searched.
            api_key: sent as ``x-api-key``.
            version: the API version in the path, as the SDK's ``state_manage_version``.
            calls_per_second: the budget; 0 makes no call at all.
            page_size: runs asked for per runs page.
            max_pages: runs pages read per scan at most (a scan stops at a page with no pending run).
            timeout_s: total time allowed per HTTP call.
            index: what is known already (tests); a new one by default.
        """
        self.api = RunApiClient(base_uri, namespace, api_key, version, calls_per_second, timeout_s)
        self._page_size = max(1, page_size)
        self._max_pages = max(1, max_pages)
        self.index = index if index is not None else RunIndex()
        self._wanted: dict[str, float] = {}
        self._waiting: dict[str, asyncio.Future[RunInfo | None]] = {}
        self._held: set[asyncio.Future[None]] = set()
        self._watches: list[_Watch] = []
        self._scan_page = 0
        self._scan_started_at = float("-inf")
        self._wake: asyncio.Event | None = None
        self._in_flight: dict[tuple[str, str], float] = {}
        self._calls_running: set[asyncio.Task[None]] = set()
        self._paused_until = float("-inf")
        self._task: asyncio.Task[None] | None = None
        self._task_ending = False
        self._probe_due = False
        self._closed = False
        self.pages = 0
        self.graphs = 0

    # --- what the runtime calls ---

    @property
    def enabled(self) -> bool:
        """Whether calls may be made: a budget above 0, and not closed."""
        return self.api.rate > 0 and not self._closed

    @property
    def running(self) -> bool:
        """Whether the background task or the HTTP session is alive."""
        return (self._task is not None and not self._task.done()) or self.api.session_open

    @property
    def calls(self) -> int:
        """HTTP calls made so far."""
        return self.api.calls

    def known(self, state_id: str) -> RunInfo | None:
        """The run of a state, if a graph fetched already holds it."""
        return self.index.known(state_id)

    def want(self, state_ids: Iterable[str]) -> None:
        """Look for these states' runs in the background (a poll brought them). Never blocks."""
        if not self.enabled:
            return
        now = time.monotonic()
        for state_id in state_ids:
            if state_id not in self._wanted and self.index.known(state_id) is None:
                self._wanted[state_id] = now
        while len(self._wanted) > self.MAX_WANTED:
            del self._wanted[next(iter(self._wanted))]
        self._poke()

    def expect_growth(self, run_id: str) -> None:
        """This runtime reported a state of the run done: its next states are likely the next ones polled,
        so the run's graph is worth fetching without waiting for a runs page to show it grown. Fetched
        now, before the poll brings them: a worker that takes one then finds its run known, with no wait."""
        if self.enabled:
            self.index.expect_growth(run_id, time.monotonic())
            self._poke()

    def taken(self, state_id: str) -> None:
        """A worker took the state: its spans have started, finding its run is no use any more."""
        self._wanted.pop(state_id, None)

    @property
    def answered(self) -> bool:
        """Whether the run APIs have answered usefully at least once (so their latency is known)."""
        return self.api.successes > 0

    def can_place_within(self, seconds: float) -> bool:
        """Whether waiting ``seconds`` for a placement is worth it: the run APIs are not failing, no call
        has been under way longer than that, and they answer fast enough on average."""
        if not self.enabled or seconds <= 0:
            return False
        if self.api.failing():
            return False
        now = time.monotonic()
        if any(now - started > seconds for started in self._in_flight.values()):
            return False  # a call under way has taken longer than the wait already
        # A placement takes a runs page and a graph; at least one of them may be under way already.
        return self.api.latency is None or self.api.latency <= seconds

    def probe(self) -> None:
        """Make one call now (a runs page) so that, by the time a worker takes a state, whether the run
        APIs answer and how fast is known. Never blocks."""
        if self.enabled:
            self._probe_due = True
            self._poke()

    async def wait(self, state_id: str, timeout: float) -> RunInfo | None:
        """The state's run, waiting at most ``timeout`` seconds for the background task to find it; less
        when a call fails or the placement has nothing more to ask (then what is known now)."""
        info = self.index.known(state_id)
        if info is not None or not self.enabled or timeout <= 0:
            return info
        if state_id not in self._wanted:
            self.want([state_id])
        future = self._waiting.get(state_id)
        if future is None:
            future = self._waiting[state_id] = asyncio.get_running_loop().create_future()
        self._poke()
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            return self.index.known(state_id)
        finally:
            if self._waiting.get(state_id) is future:
                del self._waiting[state_id]

    async def hold(self, waiting: Coroutine[Any, Any, Any], timeout: float) -> None:
        """Await ``waiting`` (something the placement's answers end, e.g. a fan-out's copies getting their
        spans) for at most ``timeout`` seconds, and no longer than the placement can answer: a failed call,
        or nothing left to ask, ends it as it ends `wait`."""
        task = asyncio.ensure_future(waiting)
        if timeout <= 0 or not self.enabled:
            task.cancel()
            return
        released: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._held.add(released)
        self._poke()
        try:
            await asyncio.wait({task, released}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._held.discard(released)
            task.cancel()

    def watch(self, callback: GraphCallback, state_id: str, run_id: str | None) -> None:
        """Call back once with a graph of ``run_id`` fetched from now on (fetched for it, within the budget),
        or, with no run id, with the first graph fetched from now on that holds ``state_id``."""
        if not self.enabled:
            return
        now = time.monotonic()
        self._watches.append(_Watch(state_id, run_id, now, now + self.WATCH_TTL_S, callback))
        if run_id is None:
            # Search for the state's run too: the graph that places it names the copies.
            self.want([state_id])
        self._poke()

    async def close(self) -> None:
        """Stop the background task and close the HTTP session."""
        self._closed = True
        task, self._task = self._task, None
        running = [task, *self._calls_running] if task is not None else list(self._calls_running)
        for running_task in running:
            running_task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await self.api.close()
        self._release_waiters()

    def _release_waiters(self) -> None:
        """End every worker's wait with what is known now."""
        for state_id, future in self._waiting.items():
            if not future.done():
                future.set_result(self.index.known(state_id))
        for held in self._held:
            if not held.done():
                held.set_result(None)

    # --- the background task ---

    def _poke(self) -> None:
        if self._task is None or self._task.done() or self._task_ending:
            loop = asyncio.get_running_loop()
            self._wake = asyncio.Event()
            self._task_ending = False
            # A context of its own: the poll's or a worker's context must not leak into the placement.
            self._task = loop.create_task(self._loop(), context=contextvars.Context())
        if self._wake is not None:
            self._wake.set()

    async def _loop(self) -> None:
        wake = self._wake
        assert wake is not None
        idle_since: float | None = None
        try:
            with suppress_http_instrumentation():
                while True:
                    now = time.monotonic()
                    paused = now < self._paused_until
                    if (
                        not paused
                        and len(self._in_flight) < self.MAX_CONCURRENT_CALLS
                        and self._next_call(now) is not None
                    ):
                        idle_since = None
                        await self.api.spend()
                        call = self._next_call(time.monotonic())
                        if call is None:
                            continue
                        self._in_flight[call] = time.monotonic()
                        task = asyncio.get_running_loop().create_task(self._perform_one(call))
                        self._calls_running.add(task)
                        task.add_done_callback(self._calls_running.discard)
                        continue
                    timeout: float | None = None  # calls under way wake the loop when they end
                    if not self._in_flight:
                        # Nothing under way, nothing to ask now: no waiting worker can be answered.
                        self._release_waiters()
                        if paused:
                            await self.api.close()  # reopened when the pause is over
                            timeout = self._paused_until - now
                        else:
                            idle_since = now if idle_since is None else idle_since
                            timeout = self.IDLE_CLOSE_S - (now - idle_since)
                            if timeout <= 0:
                                # Idle: end (a later want, wait or watch starts a new task).
                                self._task_ending = True
                                return
                    elif paused:
                        timeout = self._paused_until - now
                    wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), timeout)
        finally:
            # Ended idle, or cancelled (close, or the event loop shutting down): leave nothing open.
            if self._wake is wake:
                self._task_ending = True
            await self.api.close()
            running = list(self._calls_running)
            for running_task in running:
                running_task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            self._release_waiters()

    async def _perform_one(self, call: tuple[str, str]) -> None:
        try:
            await self._perform(*call)
        except Exception:
            _logger.debug("run API placement step failed", exc_info=True)
        finally:
            self._in_flight.pop(call, None)
            self._probe_due = False
            if self.api.failures:
                # Back off while the run APIs fail, and wait no longer for them.
                self._paused_until = time.monotonic() + self.api.backoff_s()
                self._release_waiters()
            if self._wake is not None:
                self._wake.set()

    def _next_call(self, now: float) -> tuple[str, str] | None:
        """The most useful call now that is not under way: ``("page", n)`` or ``("graph", run_id)``."""
        self._watches = [w for w in self._watches if w.expires_at > now]
        while self._wanted and next(iter(self._wanted.values())) < now - self.WATCH_TTL_S:
            del self._wanted[next(iter(self._wanted))]
        for call in self._candidates(now):
            if call not in self._in_flight and not (call[0] == "page" and self._page_in_flight()):
                return call
        return None

    def _page_in_flight(self) -> bool:
        return any(kind == "page" for kind, _ in self._in_flight)

    def _candidates(self, now: float) -> Iterator[tuple[str, str]]:
        """Calls worth making, most useful first."""
        if self._probe_due:
            yield ("page", "1")
        for watch in self._watches:
            if watch.run_id is not None:
                yield ("graph", watch.run_id)
        if not self._wanted:
            self._scan_page = 0
            # Runs this runtime saw grow (it reported their states): their next states are coming, and
            # found before the poll brings them they need no wait. Only with budget to spare.
            if self.api.has_spare(0.5):
                for run in self.index.grown_runs():
                    yield ("graph", run.run_id)
            return
        if self._scan_page:
            yield ("page", str(self._scan_page + 1))
        scan_due = max(self._wanted.values()) >= self._scan_started_at
        if scan_due and now - self._scan_started_at >= self.SCAN_INTERVAL_S:
            yield ("page", "1")
        for run in self.index.grown_runs():
            yield ("graph", run.run_id)
        if scan_due or self._scan_page or self._page_in_flight():
            # What a runs page under way or due tells may rule out the runs below: wait for it.
            yield ("page", "1")
            return
        for run in self.index.unchecked_runs(min(self._wanted.values())):
            yield ("graph", run.run_id)
        # Last: a wanted state is QUEUED, so its run is pending, unless the page raced with its report.
        for run in self.index.grown_settled_runs():
            yield ("graph", run.run_id)

    async def _perform(self, kind: str, target: str) -> None:
        sent_at = time.monotonic()
        if kind == "page":
            page = int(target)
            if page == 1:
                self._scan_started_at = sent_at
            self._scan_page = 0
            items = read_runs_page(await self.api.get(f"runs/{page}/{self._page_size}"))
            self.pages += 1
            if items is None:
                return
            pending = self.index.note_page(items, sent_at)
            if pending and len(items) == self._page_size and page < self._max_pages:
                self._scan_page = page
            return
        run_id = target
        graph = read_graph(await self.api.get(f"states/run/{quote(run_id, safe='')}/graph"))
        self.graphs += 1
        if graph is None:
            return
        self.index.index_graph(run_id, graph, sent_at)
        self._notify_watches(run_id, graph, sent_at)
        self._settle_wanted(run_id, graph.node_ids)

    def _notify_watches(self, run_id: str, graph: GraphNodes, sent_at: float) -> None:
        remaining = []
        for watch in self._watches:
            holds = watch.run_id is None and watch.state_id in graph.identifier_of
            matches = watch.run_id == run_id or holds
            if matches and sent_at >= watch.since:
                try:
                    watch.callback(run_id, graph)
                except Exception:
                    _logger.warning("exo_otel: a run graph callback failed", exc_info=True)
            else:
                remaining.append(watch)
        self._watches = remaining

    def _settle_wanted(self, run_id: str, state_ids: list[str]) -> None:
        for state_id in state_ids:
            if self._wanted.pop(state_id, None) is None:
                continue
            future = self._waiting.get(state_id)
            if future is not None and not future.done():
                future.set_result(self.index.known(state_id))
