"""`switchyard bench stream`: time to first event of a relayed image stream, through
Switchyard against the upstream's own.

A fake OpenAI images host on loopback streams as OpenAI streams: a request with `stream: true`
and `partial_images` is answered with its first `image_generation.partial_image` event at once
(a PNG of `partial_chars` base64 characters), then the completed image. One client, one
request at a time on keep-alive connections, alternates between the host itself and
`python -m proxy serve` in front of it (a fresh data directory, a key without a budget): the
time from the request's first byte to the first event's last byte, each way. What Switchyard
adds is the median of the paired differences (each proxied request against the direct one
just before it), so a shared machine's drifting speed cancels.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

from proxy.bench import procs
from proxy.bench.hostile import png_b64
from proxy.bench.loopback import LoopbackServer, on_own_loop, read_request
from proxy.bench.upstream import png_base64

TARGET_ADDED_MS = 2.0
_PROVIDERS = """\
[bench]
protocol = "openai_images"
base_url = "http://127.0.0.1:{port}/v1"
key_env = "{key_env}"
timeout_s = 60
max_in_flight = 8
options = {{ stream_partials = true }}
"""


@dataclass(frozen=True, slots=True)
class Options:
    requests: int = 200  # each way, after the warm-up
    warmup: int = 20
    partial_chars: int = 100_000  # a partial image's base64


QUICK = Options(requests=5, warmup=2, partial_chars=2_000)


@dataclass
class StreamingHost(LoopbackServer):
    """Answers every request with a stream: one partial image at once, then the completed
    one (a real PNG, as Switchyard checks every image it bills)."""

    partial_chars: int
    port: int = 0
    _server: asyncio.Server | None = None
    _replies: tuple[bytes, bytes] = field(default=(b"", b""))

    async def start(self) -> None:
        first = _event("image_generation.partial_image", png_base64(self.partial_chars),
                       partial_image_index=0)
        last = _event("image_generation.completed", png_b64(64, 64, "bench"),
                      usage={"total_tokens": 2, "input_tokens": 1, "output_tokens": 1,
                             "input_tokens_details": {"text_tokens": 1, "image_tokens": 0}})
        head = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n")
        self._replies = (head + _chunk(first), _chunk(last) + _chunk(b""))
        await super().start()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await read_request(reader)
                writer.write(self._replies[0])
                await writer.drain()
                writer.write(self._replies[1])
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()


def _event(name: str, b64: str, **extra: object) -> bytes:
    data = {"type": name, "b64_json": b64, "created_at": int(time.time()), "size": "1024x1024",
            "quality": "high", "background": "opaque", "output_format": "png", **extra}
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def first_event_s(client: httpx.Client, url: str, body: bytes) -> float:
    """Seconds from sending the request to holding its first whole event (comments, such as
    keep-alives, are not events); the rest of the stream is read before it returns."""
    started = time.perf_counter()
    seen = b""
    took = None
    with client.stream("POST", url, content=body) as reply:
        if reply.status_code != 200:
            raise procs.BenchError(f"{url} answered {reply.status_code}")
        for chunk in reply.iter_raw():
            if took is None:
                seen += chunk
                if b"\ndata: " in seen and b"\n\n" in seen.partition(b"\ndata: ")[2]:
                    took = time.perf_counter() - started
    if took is None:
        raise procs.BenchError(f"{url} sent no event")
    return took


@dataclass(frozen=True, slots=True)
class Figures:
    direct_s: tuple[float, ...]
    proxied_s: tuple[float, ...]

    @property
    def added_s(self) -> float:
        return statistics.median(p - d for d, p in zip(self.direct_s, self.proxied_s,
                                                       strict=True))


def measure(options: Options) -> Figures:
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="switchyard-bench-")))
        host = StreamingHost(options.partial_chars)
        stack.enter_context(on_own_loop(host))
        routes = tmp / "routes"
        procs.write_routes(routes, host.port)
        (routes / "providers.toml").write_text(_PROVIDERS.format(port=host.port,
                                                                 key_env=procs.KEY_ENV))
        data_dir = tmp / "data"
        data_dir.mkdir()
        key = procs.create_key(data_dir)
        server = stack.enter_context(procs.switchyard(routes, data_dir))
        return _alternate(options, host.port, server.base_url, key)


def _alternate(options: Options, port: int, base_url: str, key: str) -> Figures:
    body = orjson.dumps({"model": procs.MODEL, "prompt": "a lighthouse", "stream": True,
                         "partial_images": 1})
    direct_url = f"http://127.0.0.1:{port}/v1/images/generations"
    proxied_url = f"{base_url}/v1/images/generations"
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    direct, proxied = [], []
    with httpx.Client(headers=headers, timeout=60) as client:
        for number in range(options.warmup + options.requests):
            pair = (first_event_s(client, direct_url, body),
                    first_event_s(client, proxied_url, body))
            if number >= options.warmup:
                direct.append(pair[0])
                proxied.append(pair[1])
    return Figures(tuple(direct), tuple(proxied))


def report(options: Options, figures: Figures) -> str:
    def row(name: str, values: tuple[float, ...]) -> str:
        ordered = sorted(values)
        p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
        return f"{name:<22}{statistics.median(values) * 1000:>9.2f}{p90 * 1000:>9.2f}"

    added_ms = figures.added_s * 1000
    verdict = "within" if added_ms <= TARGET_ADDED_MS else "over"
    return "\n".join([
        _title(options), f"{'':<22}{'p50 ms':>9}{'p90 ms':>9}",
        row("upstream direct", figures.direct_s),
        row("through Switchyard", figures.proxied_s),
        f"added by Switchyard: {added_ms:.2f} ms (median of paired differences; "
        f"target <= {TARGET_ADDED_MS:g} ms: {verdict})"])


def _title(options: Options) -> str:
    return (f"Time to first event of a relayed image stream: {options.requests} requests each "
            f"way, one at a time, after {options.warmup} warm-up pairs; first event = a "
            f"partial image of {options.partial_chars:,} base64 characters")


def main(options: Options) -> str:
    return report(options, measure(options))
