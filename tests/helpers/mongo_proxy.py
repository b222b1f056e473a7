"""A loopback TCP proxy in front of a MongoDB wire-protocol server that counts the requests it forwards.

Every message a client sends is forwarded unchanged; each is counted by its command: the first key of
an OP_MSG's body section (``find``, ``insert``, ``update``, ``hello``...), ``OP_QUERY`` for the legacy
opcode drivers still use for a connection's first handshake, ``op:<code>`` for any other; and by
command and collection (the first key's value, where it is a string). The answers
flow back unchanged and are not counted. The proxy runs its own event loop on a thread, so servers in
other processes can use it while the caller's loop is busy or blocked.

``database_requests()`` leaves out the drivers' monitoring (``hello``, ``isMaster``, ``ping`` and the
handshake): what is left is the work the application asked of the database.

``hold``, where given, sees each whole client message before it is forwarded: when it answers True,
that message and everything after it on its connection are not forwarded (the connection is closed),
so a test can stop a client at an exact request.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

OP_MSG = 2013
OP_QUERY = 2004
MONITORING = frozenset({"hello", "isMaster", "ismaster", "ping", "OP_QUERY", "endSessions"})
_HEADER = struct.Struct("<iiii")  # messageLength, requestID, responseTo, opCode


def command_of(message: bytes) -> str:
    """The command a whole client message (header included) asks for."""
    return target_of(message)[0]


def target_of(message: bytes) -> tuple[str, str | None]:
    """(the command, the collection it names or None) of a whole client message (header included)."""
    _length, _request, _response_to, op_code = _HEADER.unpack_from(message)
    if op_code == OP_QUERY:
        return "OP_QUERY", None
    if op_code != OP_MSG:
        return f"op:{op_code}", None
    offset = _HEADER.size + 4  # flagBits
    while offset < len(message):
        kind = message[offset]
        offset += 1
        if kind == 0:  # the body: a BSON document; its first element's name is the command
            element_type = message[offset + 4]
            name_start = offset + 4 + 1  # document length, element type
            name_end = message.index(b"\x00", name_start)
            command = message[name_start:name_end].decode("utf-8", "replace")
            collection = None
            if element_type == 0x02:  # a string: the collection (find, insert, update, delete...)
                (size,) = struct.unpack_from("<i", message, name_end + 1)
                collection = message[name_end + 5 : name_end + 4 + size].decode("utf-8", "replace")
            return command, collection
        (size,) = struct.unpack_from("<i", message, offset)  # kind 1: a document sequence
        offset += size
    return "OP_MSG", None


class MongoCountingProxy:
    """Forwards ``127.0.0.1:<port>`` to the server at ``target`` (a ``mongodb://host:port/`` URI)."""

    def __init__(self, target: str, hold: Callable[[bytes], bool] | None = None) -> None:
        parts = urlsplit(target)
        self._hold = hold
        assert parts.hostname is not None and parts.port is not None, target
        self._target = (parts.hostname, parts.port)
        self._query = parts.query
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._targets: Counter[str] = Counter()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="mongo proxy", daemon=True)
        self.uri = ""

    def start(self) -> None:
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        port = started.result(timeout=10)
        self.uri = f"mongodb://127.0.0.1:{port}/" + (f"?{self._query}" if self._query else "")

    def stop(self) -> None:
        if self._server is not None:
            closed = asyncio.run_coroutine_threadsafe(self._close(), self._loop)
            with contextlib.suppress(Exception):
                closed.result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    def counts(self) -> Counter[str]:
        """Messages forwarded so far, by command."""
        with self._lock:
            return Counter(self._counts)

    def targets(self) -> Counter[str]:
        """Messages forwarded so far, by ``"command collection"`` (the command alone where none is named)."""
        with self._lock:
            return Counter(self._targets)

    def database_requests(self) -> int:
        """Requests forwarded so far, the drivers' monitoring left out."""
        return sum(n for command, n in self.counts().items() if command not in MONITORING)

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _close(self) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self._target)
        except OSError:
            client_writer.close()
            return
        back = asyncio.ensure_future(self._pipe(server_reader, client_writer))
        try:
            while True:
                header = await client_reader.readexactly(_HEADER.size)
                (length,) = struct.unpack_from("<i", header)
                message = header + await client_reader.readexactly(length - _HEADER.size)
                if self._hold is not None and self._hold(message):
                    break
                command, collection = target_of(message)
                with self._lock:
                    self._counts[command] += 1
                    self._targets[command if collection is None else f"{command} {collection}"] += 1
                server_writer.write(message)
                await server_writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            back.cancel()
            for writer in (server_writer, client_writer):
                with contextlib.suppress(Exception):
                    writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(Exception):
            writer.close()


@contextlib.contextmanager
def mongo_counting_proxy(
    target: str, hold: Callable[[bytes], bool] | None = None
) -> Iterator[MongoCountingProxy]:
    proxy = MongoCountingProxy(target, hold)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
