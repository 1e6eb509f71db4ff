"""`bench overhead --otel`'s collector: a local OTLP/HTTP receiver that only counts.

It runs in its own process (`python -m proxy.bench.otlp_sink`), so decoding exports costs
neither Switchyard nor the benchmark's client; prints its port on the first line of stdout
and serves until killed. POST /v1/traces takes an export (protobuf, gzip or not) and counts
its spans; GET /count answers {"exports", "spans", "bytes"} as JSON.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.exports = self.spans = self.bytes = 0

    def take(self, body: bytes) -> None:
        spans = _spans(body)
        with self.lock:
            self.exports += 1
            self.spans += spans
            self.bytes += len(body)


def _spans(body: bytes) -> int:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    export = ExportTraceServiceRequest.FromString(body)
    return sum(len(scope.spans) for resource in export.resource_spans
               for scope in resource.scope_spans)


def _handler(counts: _Counts) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path == "/v1/traces":
                counts.take(body)
            self._answer(200 if self.path == "/v1/traces" else 404, b"",
                         "application/x-protobuf")

        def do_GET(self) -> None:
            with counts.lock:
                body = json.dumps({"exports": counts.exports, "spans": counts.spans,
                                   "bytes": counts.bytes}).encode()
            self._answer(200, body, "application/json")

        def _answer(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return None

    return Handler


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(_Counts()))
    print(server.server_address[1], flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
