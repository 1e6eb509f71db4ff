"""proxy.heap: a served process keeps the blocks of megabyte replies for reuse instead of
faulting fresh pages in for each request, and gives memory back when trimmed."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path

import httpx
import pytest

from proxy import heap
from proxy.bench import procs

SIZE = 1_400_000  # base64 characters in the fake host's reply
CONCURRENT = 8  # one at a time, glibc's own adaptive threshold already reuses the blocks


def minor_faults(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7])  # minflt: the 10th field, the 8th after the command's name


async def generate(base_url: str, key: str, rounds: int) -> None:
    body = json.dumps({"model": procs.MODEL, "prompt": f"bench payload={SIZE}",
                       "size": "1024x1024", "output_format": "png"})
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0,
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        for _ in range(rounds):
            answers = await asyncio.gather(*(
                client.post("/v1/images/generations", content=body,
                            headers={"Content-Type": "application/json"})
                for _ in range(CONCURRENT)))
            assert [a.status_code for a in answers] == [200] * CONCURRENT
            assert all(len(a.json()["data"][0]["b64_json"]) == SIZE for a in answers)


def test_megabyte_replies_reuse_the_heap_instead_of_faulting_pages_in() -> None:
    """Before the tuning, 8 concurrent 1.4 MB replies cost 100 to 240 page faults each."""
    if not heap.tune():
        pytest.skip("the heap is tuned on glibc only")
    with tempfile.TemporaryDirectory() as tmp, procs.upstream([SIZE], 0.0) as port:
        root = Path(tmp)
        procs.write_routes(root / "routes", port)
        (root / "data").mkdir()
        key = procs.create_key(root / "data")
        with procs.switchyard(root / "routes", root / "data") as server:
            asyncio.run(generate(server.base_url, key, rounds=3))  # warm: the heap grows once
            before = minor_faults(server.pid)
            asyncio.run(generate(server.base_url, key, rounds=10))
            per_request = (minor_faults(server.pid) - before) / (10 * CONCURRENT)
    assert per_request < 20, f"{per_request:.0f} page faults per 1.4 MB request"


def test_trim_gives_freed_heap_memory_back() -> None:
    if not heap.tune():
        pytest.skip("the heap is tuned on glibc only")
    blocks = [bytearray(b"x" * (4 << 20)) for _ in range(12)]  # 48 MB, from the heap now
    grown = procs.rss_bytes(os.getpid())
    del blocks
    heap.trim()
    assert grown - procs.rss_bytes(os.getpid()) > 30 << 20
