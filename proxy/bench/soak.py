"""`switchyard bench soak`: does a long-running server stay flat? Memory and log lines over many
requests through a real `serve` process.

The fake upstream (proxy.bench.upstream) and Switchyard run in their own processes, as in the
overhead benchmark; this process sends `requests` image requests from `concurrency` workers
and reads the server's resident memory from /proc every `every` requests. A server whose log
handler was closed under it queued every record forever (64 -> 80 MB over 12,000 requests,
and no line written): here the log must hold one request line per request, and memory must
stop growing once warm.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from proxy.bench import procs

PAYLOAD_CHARS = 2_000
WARM_UP = 1_000
# Growth from the first sample after warm-up to the last that still counts as flat.
FLAT_MB = 5.0


@dataclass(frozen=True, slots=True)
class Sample:
    requests: int
    rss_mb: float
    seconds: float


async def _drive(base_url: str, key: str, total: int, concurrency: int, every: int,
                 pid: int) -> tuple[list[Sample], int]:
    """Send `total` requests; sample RSS each `every` of them; returns (samples, failures)."""
    samples: list[Sample] = []
    sent = failures = 0
    started = time.monotonic()
    body = {"model": procs.MODEL, "prompt": f"payload={PAYLOAD_CHARS}", "size": "1024x1024"}
    async with httpx.AsyncClient(base_url=base_url, timeout=60,
                                 headers={"authorization": f"Bearer {key}"}) as client:
        async def worker() -> None:
            nonlocal sent, failures
            while sent < total:
                sent += 1
                if sent % every == 0:
                    samples.append(Sample(sent, procs.rss_bytes(pid) / 2**20,
                                          time.monotonic() - started))
                response = await client.post("/v1/images/generations", json=body)
                failures += response.status_code != 200
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    samples.append(Sample(sent, procs.rss_bytes(pid) / 2**20, time.monotonic() - started))
    return samples, failures


def request_lines(log: str) -> int:
    return sum(" switchyard.requests: " in line for line in log.splitlines())


def main(total: int = 20_000, concurrency: int = 8, every: int = 2_000) -> str:
    with tempfile.TemporaryDirectory(prefix="switchyard-soak-") as tmp:
        root = Path(tmp)
        data_dir = root / "data"
        data_dir.mkdir()
        with procs.upstream([PAYLOAD_CHARS], 0.0) as port:
            procs.write_routes(root / "routes", port)
            key = procs.create_key(data_dir)
            with procs.switchyard(root / "routes", data_dir) as server:
                warm, _ = asyncio.run(_drive(server.base_url, key, WARM_UP, concurrency,
                                             WARM_UP, server.pid))
                samples, failures = asyncio.run(_drive(server.base_url, key, total,
                                                       concurrency, every, server.pid))
                time.sleep(0.3)  # the log thread's last batch
                lines = request_lines((data_dir / "switchyard.log").read_text(errors="replace"))
    return render(warm[-1], samples, failures, lines, WARM_UP + total)


def render(warm: Sample, samples: list[Sample], failures: int, lines: int, sent: int) -> str:
    out = [f"soak: {sent - WARM_UP} requests after {WARM_UP} to warm up, one server, "
           f"2 KB images; resident memory of the server",
           f"{'requests':>9}  {'RSS MB':>7}  {'seconds':>7}",
           f"{'warm':>9}  {warm.rss_mb:7.1f}  {'':>7}"]
    out += [f"{s.requests:>9}  {s.rss_mb:7.1f}  {s.seconds:7.1f}" for s in samples]
    first, last = samples[0], samples[-1]
    growth = last.rss_mb - first.rss_mb
    out.append(f"growth from {first.requests} to {last.requests} requests: {growth:+.1f} MB; "
               f"failed requests: {failures}; request lines in the log: {lines} of {sent}")
    flat = growth <= FLAT_MB
    out.append(f"{'PASS' if flat else 'FAIL'} memory flat: {growth:+.1f} MB <= {FLAT_MB} MB")
    out.append(f"{'PASS' if lines == sent else 'FAIL'} a log line per request: {lines} of {sent}")
    return "\n".join(out)
