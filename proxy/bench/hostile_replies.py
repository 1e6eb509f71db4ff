"""`switchyard bench hostile`: one server's peak memory while upstreams misbehave.

The hostile upstream (proxy.bench.hostile) runs in this process; a fresh `serve` process per
misbehaviour (so no breaker spares the hostile route) gets `requests` requests, `concurrency`
at a time, for a model whose cheaper route is the hostile one. Each must be answered by the
healthy route; the server's peak resident memory (VmHWM) is read after each. Unbounded, a
1 MB gzip bomb took one request to 2.1 GB, a 200 MB body to 773 MB and a 12000x12000 PNG to
603 MB (converting it).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from pathlib import Path

import httpx

from proxy.bench import procs
from proxy.bench.hostile import BEHAVIOURS, MB, HostileUpstream, catalog_files

LIMIT_MB = 200.0
# Who must answer: the healthy route, except where the hostile reply is usable (cut to n).
SERVED_BY = {"too_many": "hostile"}


async def _requests(base_url: str, key: str, prompt: str, requests: int,
                    concurrency: int) -> Counter[str]:
    """How the requests ended: `status provider`, counted."""
    outcomes: Counter[str] = Counter()
    body = {"model": "hardened", "prompt": prompt, "size": "1024x1024"}
    if prompt == "corrupt":
        body["output_format"] = "jpeg"
    async with httpx.AsyncClient(base_url=base_url, timeout=120,
                                 headers={"authorization": f"Bearer {key}"}) as client:
        async def one() -> None:
            response = await client.post("/v1/images/generations", json=body)
            outcomes[f"{response.status_code} {response.headers.get('x-switchyard-provider')}"] \
                += 1
        for start in range(0, requests, concurrency):
            await asyncio.gather(*(one() for _ in range(min(concurrency, requests - start))))
    return outcomes


async def _run(requests: int, concurrency: int) -> list[tuple[str, float, float, str]]:
    upstream = HostileUpstream(drip_s=1.0, huge_bytes=200 * MB, bomb_bytes=1024 * MB)
    await upstream.start()
    rows = []
    try:
        for behaviour in BEHAVIOURS:
            rows.append(await asyncio.to_thread(_one, upstream, behaviour, requests,
                                                concurrency))
    finally:
        await upstream.close()
    return rows


def _one(upstream: HostileUpstream, behaviour: str, requests: int,
         concurrency: int) -> tuple[str, float, float, str]:
    with tempfile.TemporaryDirectory(prefix="switchyard-hostile-") as tmp:
        root = Path(tmp)
        for name, text in catalog_files(upstream, key_env=procs.KEY_ENV).items():
            (root / "routes" / name).parent.mkdir(parents=True, exist_ok=True)
            (root / "routes" / name).write_text(text)
        data_dir = root / "data"
        data_dir.mkdir()
        key = procs.create_key(data_dir)
        with procs.switchyard(root / "routes", data_dir) as server:
            idle = procs.rss_bytes(server.pid) / MB
            outcomes = asyncio.run(_requests(server.base_url, key, behaviour, requests,
                                             concurrency))
            peak = procs.rss_bytes(server.pid, "VmHWM") / MB
    ended = ", ".join(f"{n} x {what}" for what, n in sorted(outcomes.items()))
    return behaviour, idle, peak, ended


def main(requests: int = 4, concurrency: int = 2) -> str:
    rows = asyncio.run(_run(requests, concurrency))
    out = [f"hostile replies: {requests} requests per misbehaviour, {concurrency} at a time, "
           "a fresh server each (max_reply_bytes and max_image_pixels at their defaults)",
           f"{'reply':<13} {'idle MB':>8} {'peak MB':>8}  answered"]
    out += [f"{name:<13} {idle:8.1f} {peak:8.1f}  {ended}" for name, idle, peak, ended in rows]
    worst = max(peak for _, _, peak, _ in rows)
    served = all(ended == f"{requests} x 200 {SERVED_BY.get(name, 'healthy')}"
                 for name, _, _, ended in rows)
    out.append(f"{'PASS' if worst < LIMIT_MB else 'FAIL'} peak RSS under hostile replies: "
               f"{worst:.1f} MB < {LIMIT_MB:.0f} MB")
    out.append(f"{'PASS' if served else 'FAIL'} every request answered 200, by the healthy "
               "route unless the hostile reply was usable")
    return "\n".join(out)
