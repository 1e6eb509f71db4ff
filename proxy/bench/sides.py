"""One side of the overhead benchmark (the host direct, the bare relay, or Switchyard) driven for
a few seconds by `hey`, with what every process spent meanwhile.

hey is Go: its cost per request is a fraction of a Python server's, and it is measured anyway
(its user and system time, from the kernel's accounting of the children we reap), so a report
can refuse a ratio when the client may have set the pace. The server's CPU is read from /proc
for its process and every descendant (the workers of `serve --workers N`), the machine's from
/proc/stat, so a reader sees how busy the shared machine was.
"""

from __future__ import annotations

import contextlib
import resource
import subprocess
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from proxy.bench import hey, machine
from proxy.bench.load import PATH
from proxy.bench.procs import BenchError, cpu_seconds, descendants


@dataclass(frozen=True, slots=True)
class Run(hey.Tally):
    """One side's run: every latency (sorted), the statuses, and the CPU each party spent."""

    wall_s: float
    latencies_s: tuple[float, ...]
    statuses: Counter[str]
    client_cpu_s: float  # hey's user + system time
    server_cpu_s: float  # the side's server processes
    busy_s: float  # the whole machine, every core
    elapsed_s: float  # hey's whole life, over which the CPU figures were taken

    @property
    def errors_5xx(self) -> int:
        return sum(n for status, n in self.statuses.items() if status.startswith("5"))

    @property
    def client_cores(self) -> float:
        return self.client_cpu_s / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def busy_cores(self) -> float:
        return self.busy_s / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def cpu_per_request_s(self) -> float:
        return self.server_cpu_s / self.answered if self.answered else 0.0


@dataclass(frozen=True, slots=True)
class Side:
    """Where load goes: a base URL, the headers it needs, and the processes that serve it."""

    name: str
    base_url: str
    pids: tuple[int, ...] = ()
    headers: Mapping[str, str] | None = None
    ca_file: Path | None = None  # an https host's certificate

    def server_cpu_s(self) -> float:
        """CPU seconds of the side's processes and their live descendants."""
        total = 0.0
        for pid in {p for root in self.pids for p in descendants(root)}:
            with contextlib.suppress(OSError):
                total += cpu_seconds(pid)
        return total


def child_running(module: str) -> int:
    """The pid of this process's child that runs `python -m module`."""
    for pid in descendants(_self_pid())[1:]:
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if module.encode() in argv:
                return pid
    raise BenchError(f"no child process runs {module}")


def _self_pid() -> int:
    return int(Path("/proc/self/stat").read_text().split()[0])


def drive(side: Side, body: bytes, seconds: float, concurrency: int) -> Run:
    """`concurrency` hey workers on one keep-alive connection each, for `seconds`."""
    hey.require()
    command = ["hey", "-z", f"{seconds:g}s", "-c", str(concurrency), "-m", "POST",
               "-T", "application/json", "-d", body.decode(), "-o", "csv",
               *_header_flags(side.headers), f"{side.base_url}{PATH}"]
    before_client = _children_cpu()
    before_server, before_busy = side.server_cpu_s(), machine.busy_seconds()
    started = time.monotonic()
    process = subprocess.run(command, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - started
    server, busy = side.server_cpu_s() - before_server, machine.busy_seconds() - before_busy
    if process.returncode != 0:
        raise BenchError(f"hey failed ({process.returncode}): {process.stderr.strip()[:300]}")
    result = hey.parse([process.stdout], _children_cpu() - before_client)
    if not result.answered:
        raise BenchError(f"{side.name}: hey got no answer from {side.base_url}")
    return Run(result.wall_s, result.latencies_s, result.statuses, result.cpu_s, server, busy,
               elapsed)


def _header_flags(headers: Mapping[str, str] | None) -> list[str]:
    return [flag for name, value in (headers or {}).items() for flag in ("-H", f"{name}: {value}")]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def interleaved(sides: Sequence[Side], runs: int) -> list[list[Side]]:
    """The order of each round: every side once, the first one rotating, so no side always
    runs right after the same neighbour."""
    return [[sides[(start + i) % len(sides)] for i in range(len(sides))]
            for start in range(runs)]
