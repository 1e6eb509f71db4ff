"""Shared fixtures: a real Switchyard server on a loopback port, keys, and the OpenAI schemas."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
import referencing
import uvicorn

from proxy.api import sse
from proxy.app import build_app
from proxy.billing.keys import KeyLimits
from proxy.billing.store import Store
from proxy.catalog import Catalog
from proxy.config import Config, load

FIXTURES = Path(__file__).parent / "fixtures"
SCHEMAS = json.loads((FIXTURES / "openai_schemas.json").read_text())


def _nullable(node: Any) -> Any:
    """`nullable: true` read as OpenAPI 3.0 means it: OpenAI's 3.1 spec still marks a few chat
    fields so (finish_reason, and the like), and its own streams send null there."""
    if isinstance(node, list):
        return [_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _nullable(value) for key, value in node.items()}
    if node.get("nullable") is True:
        if "enum" in node:
            node["enum"] = [*node["enum"], None]
        if isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
    return node


@pytest.fixture(scope="session")
def validate() -> Callable[[str, Any], None]:
    """validate('ImagesResponse', body) against OpenAI's official schema."""
    resource = referencing.Resource.from_contents(
        _nullable(SCHEMAS), default_specification=referencing.jsonschema.DRAFT202012)
    registry = referencing.Registry().with_resource("openai.json", resource)

    def check(name: str, body: Any) -> None:
        schema = {"$ref": f"openai.json#/components/schemas/{name}"}
        jsonschema.Draft202012Validator(schema, registry=registry).validate(body)

    return check


@dataclass
class Running:
    base_url: str
    config: Config
    app: Any = None  # the Starlette app, for what tests reach into (app.state.services)

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"

    def new_key(self, name: str = "test", limits: KeyLimits | None = None) -> str:
        with Store(self.config.database) as store:
            return store.create_key(name, limits=limits)[1]

    def store(self) -> Store:
        return Store(self.config.database)


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def serve(config: Config, catalog: Catalog | None = None,
          transports: Mapping[str, httpx.AsyncBaseTransport] | None = None,
          tracer: Any = None) -> Iterator[Running]:
    """Run build_app under uvicorn in a thread, on a real socket, until the block ends.

    `transports` maps provider names to fake upstreams (httpx transports) for adapter tests;
    `tracer` (proxy.tracing.otel.Tracer) turns traces on.
    """
    sock = free_socket()
    port = sock.getsockname()[1]
    app = build_app(config, catalog, transports, tracer)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning",
                                           access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    try:
        yield Running(f"http://127.0.0.1:{port}", config, app)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def make_config(data_dir: Path, **overrides: Any) -> Config:
    settings: dict[str, Any] = {"routes_dir": FIXTURES / "routes", "simulation_time_scale": 0,
                                **overrides}
    return load(env={}, data_dir=data_dir, **settings)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """One server per test module, on the deterministic test catalog, with a 4 MiB body cap."""
    config = make_config(tmp_path_factory.mktemp("data"), max_body_bytes=4 * 1024 * 1024)
    with serve(config) as running:
        yield running


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A server whose simulated hosts take their catalog latency, for the streams' tests:
    sim-cheap takes 1 s, sim-broken fails after 0.1 s."""
    with serve(make_config(tmp_path_factory.mktemp("data"), simulation_time_scale=1.0)) as s:
        yield s


@pytest.fixture
def keepalive(monkeypatch: pytest.MonkeyPatch) -> float:
    """A stream's keep-alive every 20 ms, so a 1 s run sends many."""
    monkeypatch.setattr(sse, "KEEPALIVE_S", 0.02)
    return 0.02


@pytest.fixture(scope="module")
def api_key(server: Running) -> str:
    return server.new_key("module")


@pytest.fixture
def client(server: Running, api_key: str) -> Iterator[openai.OpenAI]:
    """The official SDK, unmodified, pointed at Switchyard; no retries so failures show."""
    with openai.OpenAI(base_url=server.v1, api_key=api_key, max_retries=0) as sdk:
        yield sdk



from tests.databases import database, postgres_url  # noqa: E402,F401  (shared fixtures)
