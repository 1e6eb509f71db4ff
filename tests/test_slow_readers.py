"""A client that reads a big image response slowly but steadily is served whole
(proxy/connections.py: its send clock restarts each time it takes DRAIN_STEP bytes), even where
the image went to the server in one send (proxy/api/streamed.py on uvloop); one that stops
reading is still dropped. uvicorn with Switchyard's guarded protocol on a real socket whose
send buffer is small, as on a real network, so the response waits in the server."""

from __future__ import annotations

import base64
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from proxy import connections
from proxy.api import streamed

BODY_S = 2.0
IMAGE = base64.b64encode(os.urandom(1_050_000)).decode()  # 1.4 M characters
RATE = 200_000  # bytes a second the steady client takes: 400 KB per BODY_S


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["path"] == "/extensions":  # what the server told the app
        body = " ".join(sorted(scope.get("extensions", {}))).encode() or b"-"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        return
    pieces = streamed.split({"data": [{"b64_json": IMAGE}]})
    assert pieces is not None
    await streamed.PiecesResponse(pieces)(scope, receive, send)


@pytest.fixture(params=["uvloop", "asyncio"])
def port(request: pytest.FixtureRequest) -> Iterator[int]:
    """The server's port; the loop it runs on is the test's parameter."""
    limits = connections.Limits(5.0, 10.0, BODY_S, 65536)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, loop=request.param,
                            log_level="warning", lifespan="off",
                            http=connections.protocol("httptools", limits))
    server = uvicorn.Server(config)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)  # accepted sockets too
    listener.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    yield listener.getsockname()[1]
    server.should_exit = True
    thread.join(10)


def _read(port: int, rate: float | None, stop_after: int = 0,
          path: str = "/") -> tuple[int, int, float, bytes]:
    """(bytes of body received, Content-Length, seconds, the body) of one response read at
    `rate` bytes a second; with `stop_after`, nothing more is read after that many bytes."""
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", port))
    received, started = b"", time.monotonic()
    with client:
        client.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
        client.settimeout(30)
        while True:
            try:
                chunk = client.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
            head, _, body = received.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), -1)
            if len(body) == length:
                break
            if stop_after and len(received) >= stop_after:
                time.sleep(BODY_S * 3)  # reads nothing more
                stop_after = 0
            elif rate is not None:
                time.sleep(max(0.0, len(received) / rate - (time.monotonic() - started)))
    return len(body), length, time.monotonic() - started, body


def test_a_slow_steady_reader_gets_the_whole_image(port: int) -> None:
    got, length, took, _ = _read(port, RATE)
    assert got == length, f"cut off after {took:.1f} s at {got} of {length} bytes"
    assert took > 2 * BODY_S  # slow enough that one clock for the whole image ran out


def test_a_reader_that_stops_is_dropped(port: int) -> None:
    got, length, _, _ = _read(port, None, stop_after=300_000)
    assert 0 < got < length


def test_a_trickle_is_dropped(port: int) -> None:
    """20 KB/s takes less than DRAIN_STEP (256 KB) in BODY_S: its clock never restarts."""
    got, length, _, _ = _read(port, 20_000)
    assert 0 < got < length


def test_only_uvloop_with_httptools_tells_the_app_it_keeps_sends(
        port: int, request: pytest.FixtureRequest) -> None:
    *_, body = _read(port, None, path="/extensions")
    told = streamed.WHOLE_SENDS in body.decode().split()
    assert told == (request.node.callspec.params["port"] == "uvloop")
