"""A client for timing one request at a time: a blocking keep-alive socket and a request encoded
once, so the client's own cost per request (tens of microseconds) stays far below what it
measures, where an httpx client on an asyncio loop spent about a millisecond of Python per
request and drifted with the machine's load by as much.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from urllib.parse import urlsplit

from proxy.bench.procs import BenchError

_HEAD_END = b"\r\n\r\n"


class LeanClient:
    """POSTs of one body to one path, on one connection made again if the server closes it."""

    def __init__(self, base_url: str, path: str, body: bytes,
                 headers: Mapping[str, str] | None = None, timeout_s: float = 60.0) -> None:
        where = urlsplit(base_url)
        if where.scheme != "http" or where.hostname is None:
            raise ValueError(f"the lean client speaks plain http to a host, not {base_url}")
        self.address = (where.hostname, where.port or 80)
        self.timeout_s = timeout_s
        lines = [f"POST {path} HTTP/1.1", f"host: {where.netloc}",
                 "content-type: application/json", f"content-length: {len(body)}",
                 *(f"{name}: {value}" for name, value in (headers or {}).items())]
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        self.sock: socket.socket | None = None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def one(self) -> tuple[int, bytes]:
        """The status and body of one request. A kept connection that the server closed
        before any byte of a reply came is made again, once; a request is never sent twice
        once a reply has begun."""
        kept = self.sock is not None
        sock = self._connected()
        try:
            try:
                sock.sendall(self.request)
            except ConnectionResetError:
                raise _Closed from None
            return self._reply(sock)
        except (BrokenPipeError, _Closed):
            self.close()
            if not kept:
                raise BenchError("the server closed a new connection without a reply") \
                    from None
        except BaseException:  # a reply read in part leaves nothing to reuse
            self.close()
            raise
        return self.one()

    def _connected(self) -> socket.socket:
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=self.timeout_s)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.sock

    def _reply(self, sock: socket.socket) -> tuple[int, bytes]:
        received = bytearray()
        while (end := received.find(_HEAD_END)) < 0:
            received += self._recv(sock, bool(received))
        head = bytes(received[:end]).decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        fields = dict(line.split(":", 1) for line in head[1:])
        length = int(next((v for k, v in fields.items() if k.lower() == "content-length"),
                          "-1"))
        if length < 0 or status < 200:
            raise BenchError("the lean client reads final Content-Length replies only")
        body = received[end + 4:]
        while len(body) < length:
            body += self._recv(sock, True)
        if len(body) > length:
            raise BenchError("the server sent more than its Content-Length")
        if any(k.lower() == "connection" and v.strip().lower() == "close"
               for k, v in fields.items()):
            self.close()
        return status, bytes(body)

    @staticmethod
    def _recv(sock: socket.socket, begun: bool) -> bytes:
        try:
            data = sock.recv(1 << 20)
        except ConnectionResetError:
            data = b""
        if not data:
            if begun:
                raise BenchError("the server closed the connection mid-reply")
            raise _Closed
        return data


class _Closed(Exception):
    """The kept connection was closed before a reply began: try once on a new one."""
