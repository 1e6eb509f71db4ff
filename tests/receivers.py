"""A webhook endpoint on loopback for tests: records every POST (headers and body) and
answers 200, after a pause if asked (a slow receiver widens any window for a second POST)."""

from __future__ import annotations

import http.server
import threading
import time


class Receiver:
    def __init__(self, pause_s: float = 0.0) -> None:
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

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def ids(self) -> list[str]:
        """The webhook-id of every POST, in the order they came."""
        return [headers["webhook-id"] for headers, _ in self.seen]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
