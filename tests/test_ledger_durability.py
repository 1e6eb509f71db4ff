"""kill -9 under load, then a ledger audit: every 200 a client saw is billed exactly once, and a
row for anything else is marked as never delivered. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from proxy.billing.store import Store
from tests.conftest import FIXTURES, free_socket

CONCURRENCY = 24
LOAD_S = 2.0


def start_server(data_dir: Path, port: int, database_url: str | None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SWITCHYARD_ROUTES_DIR": str(FIXTURES / "routes"),
           "SWITCHYARD_SIMULATION_TIME_SCALE": "0.05", "SWITCHYARD_DATA_DIR": str(data_dir)}
    if database_url:
        env["SWITCHYARD_DATABASE_URL"] = database_url
    process = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--port", str(port)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("server did not start")


async def load(base: str, key: str, seen: dict[str, tuple[int, int]],
               stop: asyncio.Event) -> int:
    """Requests in a loop from CONCURRENCY workers until the server dies; returns requests sent."""
    sent = 0
    async with httpx.AsyncClient(base_url=base, timeout=30,
                                 headers={"authorization": f"Bearer {key}"}) as client:
        async def worker(i: int) -> None:
            nonlocal sent
            n = 1 + i % 3
            while not stop.is_set():
                sent += 1
                try:
                    response = await client.post("/v1/images/generations", json={
                        "model": "test-image", "prompt": f"w{i}", "n": n})
                except httpx.HTTPError:
                    continue
                if response.status_code == 200:
                    billed = round(float(response.headers["x-switchyard-billed-usd"]) * 1e6)
                    seen[response.headers["x-request-id"]] = (n, billed)

        await asyncio.gather(*(worker(i) for i in range(CONCURRENCY)))
    return sent


@pytest.fixture
def target(database: str, tmp_path: Path) -> Iterator[tuple[Path, str | None]]:
    yield tmp_path / "data", database if database.startswith("postgres") else None


def test_kill_9_under_load_loses_and_doubles_nothing(target: tuple[Path, str | None]) -> None:
    data_dir, url = target
    with Store(url or data_dir / "switchyard.db") as store:
        key = store.create_key("load")[1]
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    process = start_server(data_dir, port, url)
    seen: dict[str, tuple[int, int]] = {}

    async def run() -> int:
        stop = asyncio.Event()
        task = asyncio.create_task(load(f"http://127.0.0.1:{port}", key, seen, stop))
        await asyncio.sleep(LOAD_S)
        os.kill(process.pid, signal.SIGKILL)
        await asyncio.sleep(0.5)
        stop.set()
        return await task

    sent = asyncio.run(run())
    process.wait(10)
    with Store(url or data_dir / "switchyard.db") as store:
        rows = store.db.query("SELECT request_id, outcome, n_delivered, billed_micros, "
                              "delivered_at FROM ledger")
        (key_record,) = store.list_keys()
        spent, _ = store.money.spent(key_record.id, "total")
    success = {r[0]: r for r in rows if r[1] == "success"}
    missing = [rid for rid in seen if rid not in success]
    # The row bills what the response said it billed, for the images it delivered.
    wrong = [rid for rid, (n, billed) in seen.items() if rid in success and
             (success[rid][2], success[rid][3]) != (n, billed)]
    unseen = [r for rid, r in success.items() if rid not in seen]
    print(f"\nkill -9 audit: requests sent {sent}, 200s seen {len(seen)}, ledger rows {len(rows)} "
          f"(success {len(success)}), 200s without a row {len(missing)}, "
          f"billed rows the client never saw {len(unseen)} (all undelivered: "
          f"{all(r[4] is None for r in unseen)})")
    assert len(seen) >= 5, "the load did not get going"
    assert not missing and not wrong
    assert all(r[4] is None for r in unseen), "a row for a response never sent looks delivered"
    assert sum(r[3] for r in success.values()) == int(spent * 1_000_000)
