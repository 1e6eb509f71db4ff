"""A fake OpenAI Images API on a real socket that streams as OpenAI streams: `stream: true` with
`partial_images` is answered text/event-stream, chunked, with `image_generation.partial_image`
events (`image_edit.*` on /images/edits) and then `*.completed` with `usage`.

Several hosts share one socket, one per path prefix (`/a/v1/...`, `/b/v1/...`), each with a
script of what it does with its next request:

- `partial` sends the next partial image, `completed` a completed image;
- `gate` waits until the test opens the gate (`open_gate`, called once its client has seen
  what came before), until the client hangs up, or until `gate_s` passes; `gates` records
  which it was ("opened", "left", "timed out"), so a test proves an event reached its client
  before the next one was even sent, and that a client that left closed the upstream call;
- `error` sends OpenAI's error event, `drop` closes the connection mid-stream;
- `status:NNN` (first only) answers that status with OpenAI's error body, no stream.

A request that does not ask for a stream is answered as OpenAI answers it: one JSON body with
the completed images of the script (a `drop` there closes the connection unanswered).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import orjson

from proxy.bench.hostile import json_reply, png_b64
from proxy.bench.loopback import LoopbackServer, client_left, on_own_loop, read_request

KEY_ENV = "OPENAI_STREAM_TEST_KEY"
MODEL = "stream-image"
USAGE = {"total_tokens": 100, "input_tokens": 50, "output_tokens": 50,
         "input_tokens_details": {"text_tokens": 10, "image_tokens": 40}}
SERVER_ERROR = {"error": {"message": "The server had an error while processing your request.",
                          "type": "server_error", "param": None, "code": None}}
_IDS = itertools.count(1)


@dataclass
class StreamHost(LoopbackServer):
    """The fake hosts: `scripts` maps a host name (path prefix) to its steps."""

    scripts: dict[str, Sequence[str]] = field(default_factory=dict)
    gate_s: float = 5.0
    port: int = 0
    calls: list[tuple[str, dict[str, object]]] = field(default_factory=list)  # host, fields
    sent: list[tuple[str, str, float]] = field(default_factory=list)  # host, step, when
    gates: list[str] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _gate: asyncio.Event | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._gate = asyncio.Event()
        await super().start()

    def open_gate(self) -> None:
        """From the test's thread: let a waiting `gate` step go on."""
        assert self._loop is not None and self._gate is not None
        self._loop.call_soon_threadsafe(self._gate.set)

    def first_sent(self, host: str, step: str) -> float:
        return next(when for name, what, when in self.sent if (name, what) == (host, step))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head, body = await read_request(reader)
                path = head.split(b" ")[1].decode()
                host = path.strip("/").split("/")[0]
                fields = _fields(head, body)
                self.calls.append((host, fields))
                kind = "image_edit" if path.endswith("/edits") else "image_generation"
                script = self.scripts.get(host, ("completed",))
                if not await self._answer(reader, writer, host, kind, script, fields):
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      host: str, kind: str, script: Sequence[str],
                      fields: dict[str, object]) -> bool:
        """Play the script; False once the connection is closed."""
        if script and script[0].startswith("status:"):
            body = orjson.dumps(SERVER_ERROR)
            writer.write(json_reply(body).replace(b"200 OK", script[0][7:].encode() + b" Err"))
            await writer.drain()
            return True
        if fields.get("stream") is not True:
            return await self._whole(writer, host, script)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
                     b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n"
                     b"x-request-id: req_" + str(next(_IDS)).encode() + b"\r\n\r\n")
        await writer.drain()
        partials = itertools.count()
        for step in script:
            if step == "gate":
                self.gates.append(await self._wait_gate(reader))
                continue
            if step == "drop":
                self._mark(host, step)
                writer.transport.abort()
                return False
            await _chunk(writer, _event(kind, step, partials))
            self._mark(host, step)
        await _chunk(writer, b"")
        return True

    async def _whole(self, writer: asyncio.StreamWriter, host: str,
                     script: Sequence[str]) -> bool:
        if "drop" in script:
            writer.transport.abort()
            return False
        images = [{"b64_json": png_b64(64, 64, host)} for step in script if step == "completed"]
        body = orjson.dumps({"created": int(time.time()), "data": images, "usage": USAGE})
        self._mark(host, "whole")
        writer.write(json_reply(body))
        await writer.drain()
        return True

    async def _wait_gate(self, reader: asyncio.StreamReader) -> str:
        assert self._gate is not None
        left = await client_left(reader, self.gate_s, self._gate)
        opened = self._gate.is_set()
        self._gate.clear()
        return "left" if left else "opened" if opened else "timed out"

    def _mark(self, host: str, step: str) -> None:
        self.sent.append((host, step, time.monotonic()))


def _event(kind: str, step: str, partials: Iterator[int]) -> bytes:
    data: dict[str, object]
    if step == "error":
        name, data = "error", SERVER_ERROR
    else:
        name = f"{kind}.{'partial_image' if step == 'partial' else 'completed'}"
        data = {"type": name, "b64_json": png_b64(64, 64, step), "created_at": int(time.time()),
                "size": "1024x1024", "quality": "high", "background": "opaque",
                "output_format": "png"}
        if step == "partial":
            data["partial_image_index"] = next(partials)
        else:
            data["usage"] = USAGE
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def _chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(b"%x\r\n%s\r\n" % (len(data), data))
    await writer.drain()


def _fields(head: bytes, body: bytes) -> dict[str, object]:
    """The request's fields that say how to answer: JSON, or the multipart form the SDK sends
    for an edit (its `stream` and `partial_images` parts)."""
    if b"application/json" in head.lower():
        found = orjson.loads(body or b"{}")
        return found if isinstance(found, dict) else {}
    fields: dict[str, object] = {}
    for name in ("stream", "partial_images", "n"):
        marker = f'name="{name}"\r\n\r\n'.encode()
        if marker in body:
            value = body.split(marker, 1)[1].split(b"\r\n", 1)[0].decode()
            fields[name] = True if value == "true" else int(value) if value.isdigit() else value
    return fields


def catalog_files(host: StreamHost, names: Sequence[str] = ("a", "b"),
                  stream_partials: bool = True) -> dict[str, str]:
    """routes/ for MODEL on the named hosts, cheapest first, each streaming partial images."""
    providers = "".join(f"""
[stream-{name}]
protocol = "openai_images"
base_url = "http://127.0.0.1:{host.port}/{name}/v1"
key_env = "{KEY_ENV}"
timeout_s = 30
options = {{ stream_partials = {str(stream_partials).lower()} }}
""" for name in names)
    model = f"""name = "{MODEL}"
owned_by = "tests"
default_strategy = "cheapest"

[capabilities]
aspect_ratios = ["1:1"]
max_n = 4
edits = true
max_reference_images = 4
"""
    model += "".join(f"""
[[routes]]
provider = "stream-{name}"
upstream_model = "gpt-image-2"
price.per_image = {{ "1K" = 0.0{i + 1} }}
options.sizes = ["1024x1024"]
""" for i, name in enumerate(names))
    return {"providers.toml": providers, f"models/{MODEL}.toml": model}


__all__ = ["KEY_ENV", "MODEL", "StreamHost", "catalog_files", "on_own_loop"]
