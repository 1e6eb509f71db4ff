"""Webhook endpoints on loopback for tests: one records every POST (headers and body) and
answers 200, after a pause if asked (a slow receiver widens any window for a second POST);
one accepts connections and never answers."""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
import time


class Receiver:
    def __init__(self, pause_s: float = 0.0, host: str = "127.0.0.1") -> None:
        self.seen: list[tuple[dict[str, str], bytes]] = []
        seen = self.seen

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                seen.append((dict(self.headers.items()), body))
                time.sleep(pause_s)
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://{host}:{self.server.server_address[1]}/hooks"

    def ids(self) -> list[str]:
        """The webhook-id of every POST, in the order they came."""
        return [headers["webhook-id"] for headers, _ in self.seen]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Hanging:
    """A receiver that accepts every connection and never answers: `accepted` counts them
    (a TLS handshake never gets its reply either)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._sock = socket.create_server((host, 0), backlog=128)
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:  # closed by stop()
                return
            self._held.append(conn)
            self.accepted += 1

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() (Linux)
        self._sock.close()
        for conn in self._held:
            conn.close()
