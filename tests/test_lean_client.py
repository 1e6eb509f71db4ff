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


class _Server:
    """A server on a thread that answers as `mode` says: "close" answers each request with
    `connection: close`; "kept" keeps its first connection open after one reply and closes
    it at the next request without a word; "drop" closes each connection at its first
    request without a word; "chunked" answers without a Content-Length."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
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
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        answered = 0
        while conn.recv(65536):
            if self.mode == "drop" or (self.mode == "kept" and answered):
                return
            if self.mode == "chunked":
                conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                             b"2\r\nok\r\n0\r\n\r\n")
            elif self.mode == "kept" and self.connections == 1:
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                answered += 1
                continue
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n"
                             b"connection: close\r\n\r\nok")
            return


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[_Server]:
    running = _Server(request.param)
    yield running
    running.listener.close()


def _client(server: _Server) -> LeanClient:
    return LeanClient(f"http://127.0.0.1:{server.port}", PATH, b"{}")


@pytest.mark.parametrize("server", ["close"], indirect=True)
def test_a_reply_that_closes_is_followed_by_a_new_connection(server: _Server) -> None:
    client = _client(server)
    assert [client.one() for _ in range(3)] == [(200, b"ok")] * 3
    assert server.connections == 3 and client.sock is None


@pytest.mark.parametrize("server", ["kept"], indirect=True)
def test_a_kept_connection_found_closed_is_made_again_once(server: _Server) -> None:
    client = _client(server)
    assert client.one() == (200, b"ok")
    assert client.one() == (200, b"ok")  # the kept connection died unanswered
    assert server.connections == 2
    client.close()


@pytest.mark.parametrize("server", ["drop"], indirect=True)
def test_a_new_connection_closed_without_a_reply_is_not_tried_again(server: _Server) -> None:
    """The request may have run: sent twice, it would be timed as one."""
    client = _client(server)
    with pytest.raises(BenchError, match="without a reply"):
        client.one()
    assert server.connections == 1 and client.sock is None


@pytest.mark.parametrize("server", ["chunked"], indirect=True)
def test_a_reply_without_a_length_is_refused(server: _Server) -> None:
    client = _client(server)
    with pytest.raises(BenchError, match="Content-Length"):
        client.one()
    assert client.sock is None  # closed: what is left of the reply is never read


def test_only_plain_http_is_spoken() -> None:
    with pytest.raises(ValueError, match="plain http"):
        LeanClient("https://127.0.0.1:1", PATH, b"{}")
