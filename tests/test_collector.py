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


def test_only_an_app_that_is_the_whole_process_tunes_the_collector(tmp_path: Path) -> None:
    """A test's app in the test runner's process leaves its collector alone (`serve` run by
    tests/test_cli.py without uvicorn once tuned it for every app started after); an app
    built as the whole process tunes it once started, with what is alive then frozen."""
    script = f"""
import gc
from proxy.app import build_app
from tests.conftest import make_config, serve
from pathlib import Path
before = gc.get_threshold()
with serve(make_config(Path({str(tmp_path / "a")!r}))):
    pass
shared = (gc.get_threshold(), gc.get_freeze_count())
app = build_app(make_config(Path({str(tmp_path / "b")!r})), own_process=True)
from starlette.testclient import TestClient
with TestClient(app):
    pass
print(before == shared[0], shared[1], gc.get_threshold()[0], gc.get_freeze_count())
"""
    same, frozen_shared, threshold, frozen = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True,
        timeout=120, cwd=Path(__file__).parent.parent).stdout.split()
    assert (same, frozen_shared) == ("True", "0")
    assert int(threshold) == 20_000 and int(frozen) > 1_000
