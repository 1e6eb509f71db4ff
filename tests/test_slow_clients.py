"""Slow and oversized clients against a real `switchyard serve` (proxy/connections.py), on both
HTTP parsers: headers dripped a byte a second get 408 at the header timeout, a connection that
sends nothing closes then too, an idle keep-alive connection closes at the keep-alive timeout,
a 16 MB header gets 431 at once without being buffered, a stalled body gets 408 at the body
timeout, a client that stops reading its response is dropped, and 500 slow sockets do not stop
anyone else.

The bounds on when a socket closes are generous: the timers are tested, not measured.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from proxy.billing.store import Store
from tests.serving import Served

KEEP_ALIVE_S, HEADER_S, BODY_S = 1.0, 2.0, 2.0
TIMEOUTS = {"SWITCHYARD_KEEP_ALIVE_TIMEOUT_S": str(KEEP_ALIVE_S),
            "SWITCHYARD_HEADER_TIMEOUT_S": str(HEADER_S),
            "SWITCHYARD_BODY_TIMEOUT_S": str(BODY_S)}
SLACK_S = 3.0
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: switchyard\r\n\r\n"


@pytest.fixture(scope="module", params=["httptools", "h11"])
def served(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data = tmp_path_factory.mktemp(f"slow-{request.param}") / "data"
    with Served(data, "--http", request.param, env=TIMEOUTS) as server:
        yield server


def tenant_key(data_dir: Path) -> str:
    with Store(data_dir / "switchyard.db") as store:
        return store.create_key("slow-clients")[1]


def connect(server: Served) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def read_until_closed(sock: socket.socket, within_s: float) -> tuple[bytes, float]:
    """All the server sends until it closes the connection, and how long that took from now;
    fails if the connection is still open after `within_s`."""
    started = time.monotonic()
    received = b""
    while True:
        left = started + within_s - time.monotonic()
        if left <= 0:
            pytest.fail(f"the connection is still open after {within_s} s: {received[:200]!r}")
        sock.settimeout(left)
        try:
            chunk = sock.recv(1 << 16)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        received += chunk
    return received, time.monotonic() - started


def read_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length, leaving the connection open."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(1 << 16)
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(1 << 16)
    return head + b"\r\n\r\n" + body


def error_of(reply: bytes, status: int) -> dict[str, str]:
    """The OpenAI error of a refusal that closes the connection."""
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), reply[:300]
    assert b"connection: close" in head.lower()
    error: dict[str, str] = json.loads(body)["error"]
    return error


def drip(sock: socket.socket, data: bytes, every_s: float, stop: threading.Event) -> None:
    for byte in data:
        try:
            sock.send(bytes([byte]))
        except OSError:
            return
        if stop.wait(every_s):
            return


def test_headers_sent_a_byte_a_second_get_408_at_the_header_timeout(served: Served) -> None:
    sock, stop = connect(served), threading.Event()
    threading.Thread(target=drip, args=(sock, HEALTHZ, 1.0, stop), daemon=True).start()
    try:
        reply, after_s = read_until_closed(sock, HEADER_S + SLACK_S)
    finally:
        stop.set()
        sock.close()
    assert error_of(reply, 408)["code"] == "request_timeout"
    assert after_s >= HEADER_S - 0.5


def test_worker_processes_cut_slow_clients_off_too(tmp_path: Path) -> None:
    """`serve --workers 2` hands the limits to processes of their own (pickled)."""
    with Served(tmp_path / "data", "--workers", "2", env=TIMEOUTS) as server:
        sock, stop = connect(server), threading.Event()
        threading.Thread(target=drip, args=(sock, HEALTHZ, 1.0, stop), daemon=True).start()
        try:
            reply, _ = read_until_closed(sock, HEADER_S + SLACK_S)
        finally:
            stop.set()
            sock.close()
    assert error_of(reply, 408)["code"] == "request_timeout"


def test_an_idle_connection_closes_at_the_keep_alive_timeout(served: Served) -> None:
    with connect(served) as sock:
        sock.sendall(HEALTHZ)
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        reply, after_s = read_until_closed(sock, KEEP_ALIVE_S + SLACK_S)
    assert reply == b"" and after_s >= KEEP_ALIVE_S - 0.5


def test_a_connection_that_never_sends_closes_at_the_header_timeout(served: Served) -> None:
    with connect(served) as sock:
        reply, after_s = read_until_closed(sock, HEADER_S + SLACK_S)
    assert reply == b"" and after_s >= HEADER_S - 0.5


def test_a_16_mb_header_gets_431_at_once_and_is_not_buffered(served: Served) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (16 << 20) + b"\r\n\r\n"
    before_kb = served.rss_kb()

    def send() -> None:
        with contextlib.suppress(OSError):  # the server may be done before the last byte
            sock.sendall(request)

    with connect(served) as sock:
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        reply, after_s = read_until_closed(sock, 20)
        sender.join(10)
    grown_kb = served.rss_kb() - before_kb
    status = reply.partition(b"\r\n")[0].decode()
    print(f"\n16 MB header ({served.args[1]}): {status} and closed after {after_s:.2f} s; "
          f"server RSS {grown_kb:+d} KiB")
    assert error_of(reply, 431)["code"] == "request_headers_too_large"
    assert after_s < 10
    assert grown_kb < 8 * 1024, "the header was buffered"


def test_a_header_block_under_the_cap_is_served(served: Served) -> None:
    filled = httpx.get(served.base + "/healthz", headers={"x-fill": "a" * 60_000})
    assert filled.status_code == 200


def test_a_stalled_body_gets_408_at_the_body_timeout(served: Served) -> None:
    key = tenant_key(served.data_dir)
    with connect(served) as sock:
        sock.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer " + key.encode() + b"\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                     b'{"model": "test-image", ')
        reply, after_s = read_until_closed(sock, BODY_S + SLACK_S)
    assert error_of(reply, 408)["code"] == "request_timeout"
    assert after_s >= BODY_S - 0.5
    # Cut off, the client left before its body was in: no error of Switchyard's to log.
    time.sleep(0.5)
    assert key not in served.log() and "unhandled" not in served.log()


def test_a_client_that_stops_reading_its_response_is_dropped(served: Served) -> None:
    key = tenant_key(served.data_dir)
    line = b'{"custom_id": "' + b"x" * 600 + b'"}\n'
    content = line * ((24 << 20) // len(line))  # ~24 MB: more than the sockets' buffers
    uploaded = httpx.post(served.base + "/v1/files", headers={"authorization": f"Bearer {key}"},
                          data={"purpose": "batch"}, files={"file": ("b.jsonl", content)},
                          timeout=30)
    assert uploaded.status_code == 200, uploaded.text
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", served.port))
    with sock:
        sock.sendall(f"GET /v1/files/{uploaded.json()['id']}/content HTTP/1.1\r\nHost: x\r\n"
                     f"Authorization: Bearer {key}\r\n\r\n".encode())
        time.sleep(BODY_S + SLACK_S)  # reading nothing
        reply, _ = read_until_closed(sock, 30)
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert len(reply) < len(content), "the whole response waited for a client that left"


def test_500_slow_sockets_do_not_stop_a_normal_client(tmp_path: Path) -> None:
    slow_env = {**TIMEOUTS, "SWITCHYARD_HEADER_TIMEOUT_S": "6"}
    with Served(tmp_path / "data", env=slow_env) as server:
        key = tenant_key(server.data_dir)
        baseline = generation_latencies(server, key)
        alone_kb = server.rss_kb()
        slow, stop = [connect(server) for _ in range(500)], threading.Event()
        for sock in slow:
            sock.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\n")
        threading.Thread(target=drip_all, args=(slow, stop), daemon=True).start()
        loaded = generation_latencies(server, key)
        print(f"\nimage request latency, 1 client: p50 {statistics.median(baseline) * 1e3:.1f} "
              f"ms, max {max(baseline) * 1e3:.1f} ms alone; p50 "
              f"{statistics.median(loaded) * 1e3:.1f} ms, max {max(loaded) * 1e3:.1f} ms beside "
              f"500 slow sockets; server RSS {alone_kb / 1024:.1f} MiB, then "
              f"{server.rss_kb() / 1024:.1f} MiB")
        try:
            closed = closed_within(slow, 6 + SLACK_S + 2)
        finally:
            stop.set()
            for sock in slow:
                sock.close()
    assert max(loaded) < 5.0  # generous: a stuck server is what this catches
    assert closed == len(slow), f"{len(slow) - closed} slow sockets still open"


def generation_latencies(server: Served, key: str, count: int = 40) -> list[float]:
    """Seconds per image request of one client, each on a new connection."""
    latencies = []
    with httpx.Client(base_url=server.base, headers={"authorization": f"Bearer {key}"},
                      limits=httpx.Limits(max_keepalive_connections=0), timeout=30) as client:
        for _ in range(count):
            started = time.monotonic()
            answer = client.post("/v1/images/generations",
                                 json={"model": "test-image", "prompt": "a lighthouse"})
            latencies.append(time.monotonic() - started)
            assert answer.status_code == 200, answer.text
    return latencies


def drip_all(socks: list[socket.socket], stop: threading.Event) -> None:
    """A header byte a second on every socket, as a slowloris client sends."""
    while not stop.wait(1.0):
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.send(b"X")


def closed_within(socks: list[socket.socket], within_s: float) -> int:
    """How many of `socks` the server closed (EOF or reset) within `within_s`."""
    selector = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    closed, deadline = 0, time.monotonic() + within_s
    while closed < len(socks) and time.monotonic() < deadline:
        for ready, _ in selector.select(max(0.0, deadline - time.monotonic())):
            sock = ready.fileobj
            assert isinstance(sock, socket.socket)
            try:
                if sock.recv(1 << 16):
                    continue  # the 408; the close comes next
            except BlockingIOError:
                continue
            except ConnectionResetError:
                pass
            selector.unregister(sock)
            closed += 1
    selector.close()
    return closed
