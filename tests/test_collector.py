"""proxy.collector: a served process runs Python's cyclic collector rarely, and its full passes
skip what it holds from startup (the catalog, routes, modules)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from proxy.bench import procs

REQUESTS = 1200
CONCURRENT = 32


def collections(base_url: str) -> dict[str, float]:
    """python_gc_collections_total per generation, from the process's /metrics."""
    text = httpx.get(f"{base_url}/metrics", timeout=10.0).text
    return {m[1]: float(m[2]) for m in re.finditer(
        r'^python_gc_collections_total\{generation="(\d)"\} (\S+)$', text, re.M)}


async def generate(base_url: str, key: str, requests: int) -> None:
    body = json.dumps({"model": procs.MODEL, "prompt": "bench payload=2000",
                       "size": "1024x1024", "output_format": "png"})
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0,
                                 headers={"Authorization": f"Bearer {key}",
                                          "Content-Type": "application/json"}) as client:
        for _ in range(requests // CONCURRENT):
            answers = await asyncio.gather(*(client.post("/v1/images/generations", content=body)
                                             for _ in range(CONCURRENT)))
            assert [a.status_code for a in answers] == [200] * CONCURRENT


def test_a_served_process_collects_rarely() -> None:
    """With Python's default thresholds, 1,200 2 KB requests at 32 concurrent ran the youngest
    generation's pass 14 times (once per 8 requests at 64 concurrent from hey)."""
    with tempfile.TemporaryDirectory() as tmp, procs.upstream([2000], 0.0) as port:
        root = Path(tmp)
        procs.write_routes(root / "routes", port)
        (root / "data").mkdir()
        key = procs.create_key(root / "data")
        with procs.switchyard(root / "routes", root / "data") as server:
            asyncio.run(generate(server.base_url, key, CONCURRENT))  # lazy imports, pools
            before = collections(server.base_url)
            asyncio.run(generate(server.base_url, key, REQUESTS))
            after = collections(server.base_url)
    passes = {generation: after[generation] - before[generation] for generation in after}
    assert passes["0"] < 3, passes  # 14 before, 0 to 1 now


def test_startup_objects_leave_the_collector_only_in_a_tuned_process() -> None:
    """`started` freezes nothing in a process `tune` did not run in (tests' in-process apps)."""
    script = ("import gc; from proxy import collector; collector.started(); "
              "untuned = gc.get_freeze_count(); collector.tune(); collector.started(); "
              "print(untuned, gc.get_freeze_count(), gc.get_threshold()[0])")
    untuned, frozen, threshold = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True,
        timeout=60).stdout.split()
    assert (int(untuned), int(threshold)) == (0, 20_000)
    assert int(frozen) > 1_000  # what the modules imported by then hold
