"""Finding the run of a state through the state manager's run APIs, with bounded calls and caches."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import aiohttp
from opentelemetry.instrumentation.utils import suppress_http_instrumentation

from exo_otel.sdk.state_context import RunInfo

_logger = logging.getLogger(__name__)


@dataclass
class _Run:
    graph_name: str | None = None
    indexed_count: int = -1
    """How many states the last fetched graph had; -1 when never fetched."""
    settled: bool = False
    """A runs page showed no pending state left; nothing can create states in the run any more."""
    finished: bool = False
    """The graph was indexed once the run had settled, so the index is complete."""


class _TransportError(Exception):
    """The state manager could not be reached in time: give up this resolve."""


class RunLookup:
    """Maps state ids to their runs, asking ``runs/{page}/{size}`` and ``states/run/{run_id}/graph``.

    Not thread-safe: a runtime resolves from its one polling task.
    """

    DEFAULT_MAX_CALLS_PER_POLL: Final = 4
    DEFAULT_PAGE_SIZE: Final = 20
    DEFAULT_TIMEOUT_S: Final = 2.0
    DEFAULT_MAX_CACHED_STATES: Final = 10_000
    DEFAULT_MAX_CACHED_RUNS: Final = 1_000

    def __init__(
        self,
        base_uri: str,
        namespace: str,
        api_key: str,
        *,
        version: str = "v0",
        max_calls_per_poll: int = DEFAULT_MAX_CALLS_PER_POLL,
        page_size: int = DEFAULT_PAGE_SIZE,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_cached_states: int = DEFAULT_MAX_CACHED_STATES,
        max_cached_runs: int = DEFAULT_MAX_CACHED_RUNS,
    ) -> None:
        """Set up an empty lookup; nothing is fetched until `resolve` meets an unknown state.

        Args:
            base_uri: the state manager, e.g. ``http://127.0.0.1:8000`` (what the SDK is given).
            namespace: the namespace whose runs are searched.
            api_key: sent as ``x-api-key``.
            version: the API version in the path, as the SDK's ``state_manage_version``.
            max_calls_per_poll: HTTP calls one `resolve` may make at most.
            page_size: runs asked for per page, newest first.
            timeout_s: total time allowed per HTTP call.
            max_cached_states: states remembered, least recently used evicted first.
            max_cached_runs: runs remembered, least recently used evicted first.
        """
        self._prefix = f"{base_uri.rstrip('/')}/{version}/namespace/{namespace}"
        self._headers = {"x-api-key": api_key}
        self._max_calls = max(0, max_calls_per_poll)
        self._page_size = max(1, page_size)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_states = max(1, max_cached_states)
        self._max_runs = max(1, max_cached_runs)
        self._states: OrderedDict[str, RunInfo] = OrderedDict()
        self._runs: OrderedDict[str, _Run] = OrderedDict()
        self.calls = 0
        """HTTP calls made so far."""

    async def resolve(self, state_ids: Sequence[str]) -> dict[str, RunInfo]:
        """Runs of the given states; states it could not place are absent. Never raises."""
        found: dict[str, RunInfo] = {}
        missing: set[str] = set()
        for state_id in state_ids:
            info = self._states.get(state_id)
            if info is None:
                missing.add(state_id)
            else:
                self._states.move_to_end(state_id)
                found[state_id] = info
        if not missing or self._max_calls == 0:
            return found
        try:
            with suppress_http_instrumentation():
                async with aiohttp.ClientSession(headers=self._headers, timeout=self._timeout) as session:
                    await self._search(session, missing, found)
        except _TransportError:
            pass
        except Exception:
            _logger.debug("run lookup failed", exc_info=True)
        return found

    async def run_graph(self, run_id: str) -> Any:
        """The body of ``states/run/{run_id}/graph``, or None on any failure. Never raises."""
        try:
            with suppress_http_instrumentation():
                async with aiohttp.ClientSession(headers=self._headers, timeout=self._timeout) as session:
                    return await self._get(session, f"states/run/{quote(run_id, safe='')}/graph")
        except _TransportError:
            return None
        except Exception:
            _logger.debug("run graph of %s failed", run_id, exc_info=True)
            return None

    async def _search(
        self, session: aiohttp.ClientSession, missing: set[str], found: dict[str, RunInfo]
    ) -> None:
        budget = self._max_calls
        page = 1
        while missing and budget > 0:
            budget -= 1
            runs = _runs_of(await self._get(session, f"runs/{page}/{self._page_size}"))
            if runs is None:
                return
            candidates = [run_id for run_id, item in runs if self._needs_fetch(run_id, item)]
            if page == 1:
                # Runs seen growing earlier that have left the first page may still be creating states.
                listed = {run_id for run_id, _ in runs}
                candidates.extend(
                    rid for rid, run in reversed(self._runs.items()) if not run.settled and rid not in listed
                )
            for run_id in candidates:
                if not missing or budget == 0:
                    return
                budget -= 1
                body = await self._get(session, f"states/run/{quote(run_id, safe='')}/graph")
                self._index(run_id, body, missing, found)
            if len(runs) < self._page_size:
                return
            page += 1

    def _needs_fetch(self, run_id: str, item: dict[str, Any]) -> bool:
        """Remember what the runs page says of a run; True when its graph may hold states not yet indexed."""
        run = self._remember(run_id)
        run.graph_name = _text(item, "graph_name") or run.graph_name
        if run.finished:
            return False
        # The count, not the status: a run with an errored state may report FAILED while others still run.
        if "pending_count" in item:
            run.settled = run.settled or item["pending_count"] == 0
        else:
            run.settled = run.settled or item.get("status") == "SUCCESS"
        total = item.get("total_count")
        if isinstance(total, int) and total == run.indexed_count:
            # States are never deleted, so an unchanged count means an unchanged graph.
            run.finished = run.settled
            return False
        return True

    def _remember(self, run_id: str) -> _Run:
        run = self._runs.get(run_id)
        if run is None:
            run = self._runs[run_id] = _Run()
            while len(self._runs) > self._max_runs:
                self._runs.popitem(last=False)
        else:
            self._runs.move_to_end(run_id)
        return run

    def _index(self, run_id: str, body: Any, missing: set[str], found: dict[str, RunInfo]) -> None:
        if not isinstance(body, dict):
            return
        nodes, edges = body.get("nodes"), body.get("edges")
        if not isinstance(nodes, list) or not isinstance(edges, list):
            _logger.debug("run graph of %s has an unexpected shape", run_id)
            return
        run = self._remember(run_id)
        run.graph_name = _text(body, "graph_name") or run.graph_name
        # Upstream draws each edge from a state's direct parent (source) to the state (target).
        parents: dict[str, str] = {}
        for edge in edges:
            source, target = _text(edge, "source"), _text(edge, "target")
            if source is not None and target is not None:
                parents[target] = source
        node_ids = [node_id for node_id in (_text(node, "id") for node in nodes) if node_id is not None]
        for state_id in node_ids:
            info = RunInfo(run_id, run.graph_name, parents.get(state_id))
            if state_id in missing:
                missing.discard(state_id)
                found[state_id] = info
            self._states[state_id] = info
            self._states.move_to_end(state_id)
        run.indexed_count = len(nodes)
        run.finished = run.settled
        while len(self._states) > self._max_states:
            _, evicted = self._states.popitem(last=False)
            # The run's index is incomplete now: its graph must be fetched again to find that state.
            stale = self._runs.get(evicted.run_id)
            if stale is not None:
                stale.indexed_count, stale.finished = -1, False

    async def _get(self, session: aiohttp.ClientSession, path: str) -> Any:
        """The JSON body of ``GET path``; None for an error answer; _TransportError when unreachable."""
        self.calls += 1
        url = f"{self._prefix}/{path}"
        try:
            async with session.get(url) as response:
                if response.status != 200:
                    _logger.debug("run lookup: GET %s answered %s", url, response.status)
                    return None
                return await response.json(content_type=None)
        except ValueError:
            _logger.debug("run lookup: GET %s answered malformed JSON", url)
            return None
        except (aiohttp.ClientError, TimeoutError) as exc:
            _logger.debug("run lookup: GET %s failed: %r", url, exc)
            raise _TransportError from exc


def _runs_of(body: Any) -> list[tuple[str, dict[str, Any]]] | None:
    """The ``(run_id, item)`` pairs of a runs page, newest first; None when the body is not a runs page."""
    if not isinstance(body, dict) or not isinstance(body.get("runs"), list):
        return None
    return [(run_id, item) for item in body["runs"] if (run_id := _text(item, "run_id")) is not None]


def _text(item: Any, key: str) -> str | None:
    """``item[key]`` when item is a JSON object and the value a non-empty string."""
    if not isinstance(item, dict):
        return None
    value = item.get(key)
    return value if isinstance(value, str) and value else None
