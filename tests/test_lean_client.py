"""The benchmarks' lean client (proxy/bench/lean_client.py): the fleet benchmark's latency pairs
time one request at a time with it, so it must keep its connection, read whole replies by
Content-Length, and come back from a server that closed the kept connection."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import orjson
import pytest

from proxy.bench import procs
from proxy.bench.lean_client import LeanClient
from proxy.bench.procs import BenchError

PATH = "/v1/images/generations"


def test_replies_are_read_whole_on_one_kept_connection() -> None:
    body = orjson.dumps({"prompt": "payload=200000"})
    with procs.upstream([200_000], 0.0) as port:
        client = LeanClient(f"http://127.0.0.1:{port}", PATH, body)
        try:
            replies = [client.one() for _ in range(3)]
            kept = client.sock
            assert kept is not None and client.one()[0] == 200 and client.sock is kept
        finally:
            client.close()
    for status, reply in replies:
        assert status == 200
        assert len(orjson.loads(reply)["data"][0]["b64_json"]) == 200_000


class _Closing:
    """A server that answers each request with `connection: close`, or (`drop`) closes the
    connection of every second request without a word."""

    def __init__(self, drop: bool = False, chunked: bool = False) -> None:
        self.drop, self.chunked = drop, chunked
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                while True:
                    request = conn.recv(65536)
                    if not request:
                        break
                    if self.drop and self.connections % 2 == 1:
                        break  # the kept connection dies before any reply
                    if self.chunked:
                        conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                                     b"2\r\nok\r\n0\r\n\r\n")
                    else:
                        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n"
                                     b"connection: close\r\n\r\nok")
                        break


@pytest.fixture
def closing() -> Iterator[_Closing]:
    server = _Closing()
    yield server
    server.listener.close()


def test_a_reply_that_closes_is_followed_by_a_new_connection(closing: _Closing) -> None:
    client = LeanClient(f"http://127.0.0.1:{closing.port}", PATH, b"{}")
    assert [client.one() for _ in range(3)] == [(200, b"ok")] * 3
    assert closing.connections == 3 and client.sock is None


def test_a_kept_connection_found_closed_is_made_again_once() -> None:
    server = _Closing(drop=True)
    try:
        client = LeanClient(f"http://127.0.0.1:{server.port}", PATH, b"{}")
        assert client.one() == (200, b"ok")  # the first connection died unanswered
        assert server.connections == 2
        client.close()
    finally:
        server.listener.close()


def test_a_reply_without_a_length_is_refused() -> None:
    server = _Closing(chunked=True)
    try:
        client = LeanClient(f"http://127.0.0.1:{server.port}", PATH, b"{}")
        with pytest.raises(BenchError, match="Content-Length"):
            client.one()
        assert client.sock is None  # closed: what is left of the reply is never read
    finally:
        server.listener.close()


def test_only_plain_http_is_spoken() -> None:
    with pytest.raises(ValueError, match="plain http"):
        LeanClient("https://127.0.0.1:1", PATH, b"{}")
