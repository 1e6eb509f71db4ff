"""`switchyard serve --workers 2`: several processes share the port, the billing store and the
metrics, so a scrape sees every worker's traffic whichever worker answers it."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai

from proxy.billing.store import Store
from tests.conftest import FIXTURES, free_socket
from tests.fakes.counting_host import KEY_ENV, MODEL, catalog_files, counting_host
from tests.serving import Served


def start(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SWITCHYARD_ROUTES_DIR": str(FIXTURES / "routes"),
           "SWITCHYARD_SIMULATION_TIME_SCALE": "0", "SWITCHYARD_DATA_DIR": str(data_dir)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    process = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--port", str(port),
                                "--workers", "2"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=0.5).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    raise RuntimeError("workers did not start")


def requests_counted(text: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(
        r'^switchyard_requests_total\{[^}]*outcome="success"[^}]*\} (\S+)$', text, re.M))


def test_two_workers_share_store_and_metrics(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with Store(data_dir / "switchyard.db") as store:
        key = store.create_key("w")[1]
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    process = start(data_dir, port)
    sent = 0
    try:
        # Bursts of concurrent requests on fresh connections until both workers have taken
        # some (which worker accepts a connection is the kernel's choice).
        while len(worker_pids(data_dir)) < 2 and sent < 200:
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda _: one_request(port, key), range(8)))
            sent += 8
        scrapes = [httpx.get(f"http://127.0.0.1:{port}/metrics").text for _ in range(6)]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(20)
    assert len(worker_pids(data_dir)) == 2, "both workers served and counted requests"
    assert all(requests_counted(text) == sent for text in scrapes), \
        (sent, [requests_counted(text) for text in scrapes])
    with Store(data_dir / "switchyard.db") as store:
        assert store.db.query("SELECT COUNT(*) FROM ledger")[0][0] == sent


def one_request(port: int, key: str) -> None:
    with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key,
                       max_retries=0) as sdk:
        sdk.images.generate(model="test-image", prompt="x",
                            extra_headers={"connection": "close"})


def worker_pids(data_dir: Path) -> set[str]:
    return {p.stem.rsplit("_", 1)[-1] for p in (data_dir / "metrics").glob("counter_*.db")}


def test_workers_without_redis_each_take_their_share_of_a_host_cap(tmp_path: Path) -> None:
    """serve --workers 2, one machine, no Redis: a host capped at 3 gets at most 1 + 1 calls
    at once (each worker knows it is one of two; they took the whole cap each, 6)."""
    with counting_host() as host:
        routes = tmp_path / "routes"
        for name, text in catalog_files(host, 3).items():
            (routes / name).parent.mkdir(parents=True, exist_ok=True)
            (routes / name).write_text(text)
        data_dir = tmp_path / "data"
        with Store(data_dir / "switchyard.db") as store:
            key = store.create_key("w")[1]
        host.delay_s = 0.3
        with Served(data_dir, "--workers", "2",
                    env={"SWITCHYARD_ROUTES_DIR": str(routes), KEY_ENV: "k"}) as served, \
                ThreadPoolExecutor(12) as pool:
            def one(_: int) -> None:
                with openai.OpenAI(base_url=f"{served.base}/v1", api_key=key,
                                   max_retries=0) as sdk:
                    for _ in range(6):
                        with contextlib.suppress(openai.APIStatusError):
                            sdk.images.generate(model=MODEL, prompt="x", size="1024x1024",
                                                extra_headers={"connection": "close"})
            list(pool.map(one, range(12)))
    assert 1 <= host.peak <= 2, f"the host saw {host.peak} calls at once"


def test_a_stop_lets_the_workers_finish_what_they_serve(tmp_path: Path) -> None:
    """SIGTERM to `serve --workers 2` (as Kubernetes sends it, to the parent only) while an
    image takes 12 s: it is answered, as one process answers it, within request_timeout_s
    (before: the parent killed its workers 10 s after the signal, and the request was cut)."""
    data_dir = tmp_path / "data"
    with Store(data_dir / "switchyard.db") as store:
        key = store.create_key("w")[1]
    # sim-cheap takes 1 s of simulated time: 12 s here.
    with Served(data_dir, "--workers", "2",
                env={"SWITCHYARD_SIMULATION_TIME_SCALE": "12"}) as served, \
            ThreadPoolExecutor(1) as pool:
        asked = pool.submit(httpx.post, f"{served.base}/v1/images/generations",
                            json={"model": "test-image", "prompt": "x",
                                  "route": {"only": ["sim-cheap"]}},
                            headers={"authorization": f"Bearer {key}"}, timeout=60)
        time.sleep(1.5)
        assert served.process is not None
        served.process.send_signal(signal.SIGTERM)
        assert asked.result().status_code == 200
        assert served.process.wait(30) == 0
