"""helpers/mongo_proxy.py: forwards wire-protocol messages unchanged both ways, counts them by command."""

from __future__ import annotations

import socket
import struct
import threading

from helpers.mongo_proxy import OP_MSG, OP_QUERY, command_of, mongo_counting_proxy, target_of


def _bson_strings(**fields: str) -> bytes:
    body = b"".join(
        b"\x02" + name.encode() + b"\x00" + struct.pack("<i", len(value) + 1) + value.encode() + b"\x00"
        for name, value in fields.items()
    )
    return struct.pack("<i", len(body) + 5) + body + b"\x00"


def _message(op_code: int, payload: bytes, request_id: int = 1) -> bytes:
    return struct.pack("<iiii", 16 + len(payload), request_id, 0, op_code) + payload


def op_msg(command: str, sequence: bool = False) -> bytes:
    sections = b""
    if sequence:  # a kind-1 document sequence before the body, as a driver may send with an insert
        documents = _bson_strings(x="y")
        identifier = b"documents\x00"
        sections += b"\x01" + struct.pack("<i", 4 + len(identifier) + len(documents)) + identifier + documents
    sections += b"\x00" + _bson_strings(**{command: "things", "$db": "exosphere"})
    return _message(OP_MSG, struct.pack("<I", 0) + sections)


def test_the_command_is_the_body_sections_first_key() -> None:
    assert command_of(op_msg("find")) == "find"
    assert command_of(op_msg("insert", sequence=True)) == "insert"
    assert target_of(op_msg("update", sequence=True)) == ("update", "things")
    assert command_of(_message(OP_QUERY, b"\x00" * 20)) == "OP_QUERY"
    assert command_of(_message(2012, b"")) == "op:2012"


def test_messages_are_forwarded_unchanged_and_counted() -> None:
    received: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:  # a stand-in database: reads two messages, answers each with its bytes reversed
        connection, _ = listener.accept()
        with connection:
            for _ in range(2):
                header = connection.recv(16, socket.MSG_WAITALL)
                (length,) = struct.unpack_from("<i", header)
                message = header + connection.recv(length - 16, socket.MSG_WAITALL)
                received.append(message)
                connection.sendall(message[::-1])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    messages = [op_msg("hello"), op_msg("update", sequence=True)]
    try:
        target = f"mongodb://127.0.0.1:{listener.getsockname()[1]}/?directConnection=true"
        with mongo_counting_proxy(target) as proxy:
            assert proxy.uri.startswith("mongodb://127.0.0.1:")
            assert proxy.uri.endswith("/?directConnection=true")
            port = int(proxy.uri.split(":")[2].split("/")[0])
            with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
                answers = []
                for message in messages:
                    client.sendall(message)
                    answers.append(client.recv(len(message), socket.MSG_WAITALL))
            thread.join(10)
            assert received == messages
            assert answers == [m[::-1] for m in messages]
            assert proxy.counts() == {"hello": 1, "update": 1}
            assert proxy.targets() == {"hello things": 1, "update things": 1}
            assert proxy.database_requests() == 1  # hello is the driver's monitoring
    finally:
        listener.close()
