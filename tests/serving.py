"""A real `switchyard serve` process for tests of what lives in the process: logging, signals,
workers, reconnects. Its stderr goes to a file the test can read while it runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from tests.conftest import FIXTURES, free_socket


def free_port() -> int:
    sock = free_socket()
    port: int = sock.getsockname()[1]
    sock.close()
    return port


class Served:
    """`python -m proxy serve` on a free port over `data_dir`, on the test catalog unless the
    environment given says otherwise. Use as a context manager: it stops with SIGTERM."""

    def __init__(self, data_dir: Path, *args: str, env: Mapping[str, str] | None = None,
                 ready: str = "/readyz", timeout_s: float = 30.0) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir.parent / f"serve-{self.port}.log"
        self.args: Sequence[str] = args
        self.env = {**os.environ, "SWITCHYARD_ROUTES_DIR": str(FIXTURES / "routes"),
                    "SWITCHYARD_SIMULATION_TIME_SCALE": "0",
                    "SWITCHYARD_DATA_DIR": str(data_dir), **(env or {})}
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.ready = ready
        self.timeout_s = timeout_s
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Served:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "proxy", "serve", "--port", str(self.port), *self.args],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if httpx.get(self.base + self.ready, timeout=0.5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"serve did not start:\n{self.log()}")

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int | None:
        """Signal the whole process group; returns the exit code (None if it had to be
        killed)."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        os.killpg(self.process.pid, sig)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)
            return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout_s: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            time.sleep(0.05)
        return False

    def rss_kb(self) -> int:
        """Resident memory of the serve process and its children (workers), in KiB."""
        assert self.process is not None
        pids = [self.process.pid, *_children(self.process.pid)]
        total = 0
        for pid in pids:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        return total


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        for child in text:
            found += [int(child), *_children(int(child))]
    return found
