"""EmbeddedStateManager: the in-memory state manager on a real socket, in a loop or in a thread."""

from __future__ import annotations

import asyncio
import secrets
import threading
from types import TracebackType

from aiohttp import web
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from exo_otel_demo.embedded.app import Api, build_app
from exo_otel_demo.embedded.models import RunStatus
from exo_otel_demo.embedded.server_side import EmbeddedServerSide
from exo_otel_demo.embedded.store import Database, StateView


class EmbeddedStateManager:
    """An in-memory Exosphere state manager speaking the upstream HTTP API.

    Use it from async code as ``async with EmbeddedStateManager() as sm:``, or from synchronous
    code as ``with EmbeddedStateManager() as sm:`` (or ``start_in_thread()`` / ``stop()``), which
    serves from a daemon thread with its own event loop. Either way ``sm.uri`` and ``sm.api_key``
    are what an exospherehost ``StateManager`` or ``Runtime`` needs.

    Args:
        api_key: The key clients must send as ``x-api-key``; a random one when None. An empty key is
            refused (ValueError).
        host: Interface to bind.
        port: Port to bind; 0 picks a free one.
        expose_run_context: Add ``run_id``, ``graph_name`` and ``parents`` to each enqueued state
            (the extension exo_otel proposes); without it the answer has exactly the upstream fields.
        server_side: Behave as the real state manager with exo_otel's state manager side loaded
            (`exo_otel.server`): the run carrier in enqueue and trigger answers, the ``run`` and
            ``node`` spans, emitted to ``tracer_provider`` (the global one when None).
    """

    def __init__(
        self,
        api_key: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        expose_run_context: bool = False,
        server_side: bool = False,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        if api_key is not None and not api_key.strip():
            # An empty key would let any client in: a request without the header would match it.
            raise ValueError("api_key must not be empty (pass None for a random one)")
        self.api_key = api_key if api_key is not None else secrets.token_hex(24)
        self.host = host
        self.expose_run_context = expose_run_context
        self._requested_port = port
        self._port: int | None = None
        self._db = Database()
        self._api = Api(self._db, self.api_key, expose_run_context)
        if server_side:
            self._api.side = EmbeddedServerSide(self._db, tracer_provider, meter_provider)
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the state manager is not running")
        return self._port

    @property
    def uri(self) -> str:
        """Base URI to give the SDK, e.g. ``http://127.0.0.1:41234`` or ``http://[::1]:41234``."""
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"http://{host}:{self.port}"

    # Serving from the caller's event loop.

    async def start(self) -> None:
        """Bind and start serving on the running event loop."""
        if self._runner is not None:
            raise RuntimeError("the state manager is already running")
        runner = web.AppRunner(build_app(self._api), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        address = runner.addresses[0]
        self._port = int(address[1])

    async def aclose(self) -> None:
        """Finish background jobs, stop serving and release the port."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        await self._api.drain()
        if self._api.side is not None:
            await self._api.side.close()
        await runner.cleanup()
        self._port = None

    async def __aenter__(self) -> EmbeddedStateManager:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # Serving from a thread of its own, for synchronous callers.

    def start_in_thread(self, timeout: float = 10.0) -> None:
        """Serve from a daemon thread running its own event loop; returns once the port is bound."""
        if self._thread is not None or self._runner is not None:
            raise RuntimeError("the state manager is already running")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.aclose())
                loop.close()

        thread = threading.Thread(target=serve, name="exo-otel-state-manager", daemon=True)
        thread.start()
        if not ready.wait(timeout):
            raise TimeoutError("the embedded state manager did not start in time")
        if failure:
            thread.join()
            raise failure[0]
        self._thread, self._thread_loop = thread, loop

    def stop(self, timeout: float = 10.0) -> None:
        """Stop a state manager started with :meth:`start_in_thread`."""
        thread, loop = self._thread, self._thread_loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._thread = self._thread_loop = None

    def __enter__(self) -> EmbeddedStateManager:
        self.start_in_thread()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # Read-only inspection: copies of the records, safe from any thread.

    def states(self, run_id: str | None = None) -> list[StateView]:
        """Copies of the states (of one run, or all), in creation order, each with its history."""
        return self._db.state_views(run_id)

    def state(self, state_id: str) -> StateView | None:
        """A copy of one state, or None."""
        return self._db.state_view(state_id)

    def registered_nodes(self, namespace: str) -> set[str]:
        """Names of the nodes registered in ``namespace``."""
        return self._db.node_names(namespace)

    def run_ids(self) -> list[str]:
        """Ids of all runs, oldest first."""
        return self._db.run_ids()

    def run_status(self, run_id: str) -> RunStatus | None:
        """SUCCESS, PENDING or FAILED for a known run; None for an unknown one."""
        return self._db.run_status_of(run_id)

    def graph(self, namespace: str, name: str) -> dict[str, object] | None:
        """The graph template as ``GET /graph/{name}`` answers it, or None."""
        return self._db.graph_json(namespace, name)
