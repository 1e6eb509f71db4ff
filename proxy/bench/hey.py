"""Load from `hey` (github.com/rakyll/hey): one hey process per replica, the concurrency split
evenly between them, all started together.

That is round robin done by the client: each replica gets the same share of workers, no
balancer process sits in the path to cost CPU or add a hop, and hey is Go, so its cost per
request is a small fraction of a Python server's (its CPU time is measured and reported, to
show it). Latencies come from hey's CSV (one row per request, to 0.1 ms).
"""

from __future__ import annotations

import resource
import shutil
import subprocess
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from proxy.bench.load import PATH, percentile
from proxy.bench.procs import BenchError


class Tally:
    """What follows from a load run's latencies, statuses and wall time (hey's Result, a
    benchmark side's Run)."""

    __slots__ = ()
    latencies_s: tuple[float, ...]  # sorted, every answered request
    statuses: Counter[str]
    wall_s: float

    @property
    def answered(self) -> int:
        return len(self.latencies_s)

    @property
    def ok(self) -> int:
        return self.statuses["200"]

    @property
    def throughput(self) -> float:
        """Requests answered 200 per second."""
        return self.ok / self.wall_s if self.wall_s > 0 else 0.0

    def percentile(self, q: float) -> float:
        return percentile(self.latencies_s, q)


@dataclass(frozen=True, slots=True)
class Result(Tally):
    """Every hey process's rows together."""

    latencies_s: tuple[float, ...]  # sorted, every answered request
    statuses: Counter[str]
    wall_s: float  # from the first request sent to the last answer
    cpu_s: float  # hey's own user and system time


def shares(total: int, parts: int) -> list[int]:
    """`total` workers split over `parts` as evenly as whole numbers allow."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def require() -> None:
    if shutil.which("hey") is None:
        raise BenchError("bench fleet drives the replicas with hey "
                         "(https://github.com/rakyll/hey, apt-get install hey); it is not on "
                         "the PATH")


def drive(base_urls: Sequence[str], key: str, body: bytes, seconds: float,
          concurrency: int) -> Result:
    """`concurrency` workers in all, split over the replicas, for `seconds`."""
    require()
    split = [(url, n) for url, n in zip(base_urls, shares(concurrency, len(base_urls)),
                                        strict=True) if n > 0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    processes = [subprocess.Popen(
        ["hey", "-z", f"{seconds:g}s", "-c", str(workers), "-m", "POST",
         "-T", "application/json", "-H", f"Authorization: Bearer {key}", "-d", body.decode(),
         "-o", "csv", f"{base_url}{PATH}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for base_url, workers in split]
    outputs = []
    for process in processes:
        out, err = process.communicate()
        if process.returncode != 0:
            raise BenchError(f"hey failed ({process.returncode}): {err.strip()[:300]}")
        outputs.append(out)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return parse(outputs, cpu)


def parse(outputs: Sequence[str], cpu_s: float) -> Result:
    """hey's CSV rows: response-time,DNS+dialup,DNS,Request-write,Response-delay,
    Response-read,status-code,offset (seconds; offset since hey started)."""
    latencies, statuses, ends = [], Counter[str](), [0.0]
    for output in outputs:
        for row in output.splitlines()[1:]:
            cells = row.split(",")
            if len(cells) < 8:
                continue
            latency = float(cells[0])
            latencies.append(latency)
            statuses[cells[6]] += 1
            ends.append(float(cells[7]) + latency)
    return Result(tuple(sorted(latencies)), statuses, max(ends), cpu_s)
