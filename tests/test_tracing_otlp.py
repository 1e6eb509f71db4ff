"""Traces over the wire: a real `switchyard serve` with OTEL_EXPORTER_OTLP_ENDPOINT set exports
its spans as OTLP/HTTP protobuf to a receiver in this test, which decodes and counts them."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import openai
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from proxy.billing.store import Store
from tests.conftest import make_config
from tests.serving import Served


class Receiver:
    """POST /v1/traces: each export's spans kept as (service.name, span name)."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str]] = []
        self.posts = 0
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                status = 404 if self.path != "/v1/traces" else 200
                if status == 200:
                    received.take(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(status)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def take(self, export: ExportTraceServiceRequest) -> None:
        self.posts += 1
        for resource_spans in export.resource_spans:
            service = next((a.value.string_value for a in resource_spans.resource.attributes
                            if a.key == "service.name"), "")
            for scope in resource_spans.scope_spans:
                self.spans += [(service, span.name) for span in scope.spans]

    def names(self) -> list[str]:
        return [name for _, name in self.spans]

    def wait_for(self, name: str, within_s: float = 10.0) -> bool:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if name in self.names():
                return True
            time.sleep(0.05)
        return False


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    found.thread.start()
    try:
        yield found
    finally:
        found.server.shutdown()
        found.server.server_close()


def test_serve_exports_its_spans_over_otlp_http(tmp_path: Path, receiver: Receiver) -> None:
    data = tmp_path / "data"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_SERVICE_NAME": "switchyard-e2e",
           "OTEL_BSP_SCHEDULE_DELAY": "100"}
    with Served(data, env=env) as served:
        with Store(make_config(data).database) as store:
            key = store.create_key("otlp")[1]
        with openai.OpenAI(base_url=served.base + "/v1", api_key=key, max_retries=0) as sdk:
            for _ in range(3):
                sdk.images.generate(model="test-image", prompt="a lighthouse")
        assert receiver.wait_for("ledger write"), receiver.names()
    names = receiver.names()
    for name in ("POST /v1/images/generations", "route test-image", "attempt sim-cheap",
                 "submit sim-cheap", "ledger write"):
        assert names.count(name) == 3, (name, names)
    assert {service for service, _ in receiver.spans} == {"switchyard-e2e"}
    assert receiver.posts >= 1
