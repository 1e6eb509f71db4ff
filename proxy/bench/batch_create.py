"""`switchyard bench batch-create`: other tenants' latency while a 50,000-line batch is created
(issue 18.3: "other requests' p99 unchanged"), through a real `serve`.

Each round, for each code tree, a fresh `serve` (a data dir of its own; with `database_url`,
a PostgreSQL database of its own too) in front of the fake upstream: one key uploads a batch
input file and creates a 10-line batch (so both sides start warm), then hey sends another
key's image requests at a steady rate (workers x requests/s each, well below what the server
can do, so latency is the server's, not a queue's) for `seconds`: the baseline. Then hey
again, and meanwhile the big batch is created; the requests in flight at any moment of that
creation are the "during" figures. Several `--code` trees (checkout roots: `git archive` of
two commits, say) are served in turn, the first side rotating each round, because a shared
machine's noise drifts.

A control follows in each round: hey once more while other processes burn the CPU the creation
took above the baseline's (the serve process and its worker, as /proc counts them), spread
over as long as it took. On a machine whose every core is shared with hey and the fake host,
work that must run somewhere slows the others by itself; the control shows how much, so the
"during" figures can be read against it. With `database_url` the control misses PostgreSQL's
own CPU (its processes are not the server's), so it reads low.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson

from proxy.bench import fleet_procs, procs
from proxy.bench.hey import require
from proxy.bench.load import PATH, percentile
from proxy.billing.store import Store

BODY = orjson.dumps({"model": procs.MODEL, "prompt": "bench payload=2000",
                     "size": "1024x1024"})
MAX_CREATE_S = 120.0


@dataclass(frozen=True, slots=True)
class Options:
    lines: int = 50_000
    rounds: int = 3
    seconds: float = 3.0  # of baseline load
    workers: int = 4  # hey -c
    rate: float = 25.0  # requests/s per worker (hey -q)
    codes: tuple[str, ...] = ()  # checkout roots; () is this installation's code
    database_url: str | None = None  # a PostgreSQL server (a database per round); or SQLite


@dataclass(frozen=True, slots=True)
class Latencies:
    """Sorted seconds of the requests answered 200, and how many were not."""

    seconds: tuple[float, ...]
    failed: int

    def figures(self) -> str:
        s = self.seconds
        return (f"p50 {percentile(s, 0.5) * 1e3:5.1f}  p99 {percentile(s, 0.99) * 1e3:6.1f}  "
                f"max {s[-1] * 1e3:6.1f} ms  ({len(s)} ok, {self.failed} failed)") if s \
            else f"no request answered ({self.failed} failed)"


@dataclass(frozen=True, slots=True)
class Round:
    code: str
    baseline: Latencies
    during: Latencies
    create_s: float
    control: Latencies  # the same CPU burnt by other processes instead
    extra_cores: float  # what the creation used above the baseline's rate, in cores


def _hey(base_url: str, key: str, options: Options, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["hey", "-z", f"{seconds:g}s", "-c", str(options.workers), "-q", f"{options.rate:g}",
         "-m", "POST", "-T", "application/json", "-H", f"Authorization: Bearer {key}",
         "-d", BODY.decode(), "-o", "csv", f"{base_url}{PATH}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _rows(process: subprocess.Popen[str]) -> list[tuple[float, float, str]]:
    """(start offset, latency, status) of each request, from hey's CSV."""
    out, err = process.communicate()
    if process.returncode not in (0, -signal.SIGINT):
        raise procs.BenchError(f"hey failed ({process.returncode}): {err.strip()[:300]}")
    rows = [row.split(",") for row in out.splitlines()[1:]]
    return [(float(c[7]), float(c[0]), c[6]) for c in rows if len(c) >= 8]


def _latencies(rows: Sequence[tuple[float, float, str]]) -> Latencies:
    ok = sorted(latency for _, latency, status in rows if status == "200")
    return Latencies(tuple(ok), len(rows) - len(ok))


def batch_file(lines: int) -> bytes:
    return b"\n".join(orjson.dumps({"custom_id": f"item-{i}", "method": "POST", "url": PATH,
                                    "body": {"model": procs.MODEL, "prompt": f"p{i}"}})
                      for i in range(lines)) + b"\n"


def _create(http: httpx.Client, lines: int) -> str:
    uploaded = http.post("/v1/files", data={"purpose": "batch"},
                         files={"file": ("in.jsonl", batch_file(lines))})
    uploaded.raise_for_status()
    created = http.post("/v1/batches", json={"input_file_id": uploaded.json()["id"],
                                             "endpoint": PATH, "completion_window": "24h"})
    if created.status_code != 200:
        raise procs.BenchError(f"batch creation answered {created.status_code}: "
                               f"{created.text[:300]}")
    return str(created.json()["id"])


def _cancel(http: httpx.Client, batch_id: str) -> None:
    """The batch's items stop (those running finish): the control runs on a quiet server."""
    http.post(f"/v1/batches/{batch_id}/cancel").raise_for_status()
    deadline = time.monotonic() + MAX_CREATE_S
    while http.get(f"/v1/batches/{batch_id}").json()["status"] != "cancelled":
        if time.monotonic() > deadline:
            raise procs.BenchError(f"batch {batch_id} was not cancelled in time")
        time.sleep(0.1)


@contextlib.contextmanager
def _served(root: Path, code: str, options: Options) -> Iterator[tuple[procs.Server, str, str]]:
    """A fresh `serve` of `code` on a database of its own, and two keys."""
    data_dir = Path(tempfile.mkdtemp(prefix="data-", dir=root))
    settings = {"PYTHONPATH": code, "PYTHONSAFEPATH": "1"} if code else {}
    with contextlib.ExitStack() as stack:
        target: str | Path = data_dir / "switchyard.db"
        if options.database_url:
            target = settings["SWITCHYARD_DATABASE_URL"] = stack.enter_context(
                fleet_procs.own_database(options.database_url, "switchyard_batch_create"))
        with Store(target) as store:
            tenant, other = store.create_key("bench")[1], store.create_key("bench")[1]
        yield stack.enter_context(procs.switchyard(root / "routes", data_dir,
                                                   settings=settings)), tenant, other


def _round(root: Path, code: str, options: Options, content: bytes) -> Round:
    """One fresh `serve` of `code`: its baseline, then its figures during a creation."""
    with _served(root, code, options) as (server, tenant, other), \
            httpx.Client(base_url=server.base_url, timeout=MAX_CREATE_S,
                         headers={"authorization": f"Bearer {tenant}"}) as http:
        _create(http, 10)
        used = tree_cpu_s(server.pid)
        baseline = _rows(_hey(server.base_url, other, options, options.seconds))
        rate = (tree_cpu_s(server.pid) - used) / options.seconds  # cores, serving the load
        uploaded = http.post("/v1/files", data={"purpose": "batch"},
                             files={"file": ("big.jsonl", content)})
        uploaded.raise_for_status()
        hey = _hey(server.base_url, other, options, MAX_CREATE_S)
        began = time.monotonic()
        time.sleep(1.0)  # hey's workers under way
        start = time.monotonic() - began
        used = tree_cpu_s(server.pid)
        created = http.post("/v1/batches", json={"input_file_id": uploaded.json()["id"],
                                                 "endpoint": PATH, "completion_window": "24h"})
        end = time.monotonic() - began
        extra = max(0.0, (tree_cpu_s(server.pid) - used) / (end - start) - rate)
        hey.send_signal(signal.SIGINT)  # hey stops and writes what it has
        rows = _rows(hey)
        if created.status_code != 200:
            raise procs.BenchError(f"batch creation answered {created.status_code}")
        _cancel(http, created.json()["id"])
        control = _control(server.base_url, other, options, extra, end - start)
    return Round(code or "installed", _latencies(baseline),
                 _latencies(in_window(rows, start, end)), end - start, control, extra)


def _control(base_url: str, key: str, options: Options, cores: float,
             seconds: float) -> Latencies:
    """hey's latencies while processes burn `cores` of CPU for `seconds`."""
    hey = _hey(base_url, key, options, MAX_CREATE_S)
    began = time.monotonic()
    time.sleep(1.0)
    start = time.monotonic() - began
    count = max(1, math.ceil(cores))
    burners = [subprocess.Popen([sys.executable, "-c", _BURN, str(cores / count), str(seconds)])
               for _ in range(count) if cores > 0]
    for burner in burners:
        burner.wait()
    end = time.monotonic() - began
    hey.send_signal(signal.SIGINT)
    return _latencies(in_window(_rows(hey), start, end))


# A share of one core for some seconds: busy for that share of every 10 ms, asleep the rest.
_BURN = """
import sys, time
share, seconds = float(sys.argv[1]), float(sys.argv[2])
end = time.monotonic() + seconds
while (now := time.monotonic()) < end:
    while time.monotonic() < now + 0.01 * share:
        pass
    time.sleep(0.01 * (1 - share))
"""


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its live descendants (a server's worker processes)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    parents[int(entry)] = int(stat.read().rpartition(b")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    tree, grew = {pid}, True
    while grew:
        found = {child for child, parent in parents.items() if parent in tree} - tree
        grew = bool(found)
        tree |= found
    total = 0.0
    for member in tree:
        try:
            total += procs.cpu_seconds(member)
        except OSError:  # ended meanwhile
            continue
    return total


def in_window(rows: Sequence[tuple[float, float, str]], start: float,
              end: float) -> list[tuple[float, float, str]]:
    """The requests in flight at some moment from `start` to `end` (seconds from hey's
    start): sent before it ended, answered after it began."""
    return [row for row in rows if row[0] < end and row[0] + row[1] > start]


def main(options: Options) -> str:
    require()
    codes = options.codes or ("",)
    rounds: list[Round] = []
    out = [f"batch-create: another key's requests ({options.workers} hey workers x "
           f"{options.rate:g}/s) before and while a {options.lines:,}-line batch is created; "
           f"{options.rounds} round(s), a fresh serve per round and code"]
    with tempfile.TemporaryDirectory(prefix="switchyard-batch-create-") as tmp, \
            procs.upstream([2000], 0.0) as port:
        root = Path(tmp)
        procs.write_routes(root / "routes", port)
        content = batch_file(options.lines)
        for number in range(options.rounds):
            shift = number % len(codes)  # the first side rotates
            for code in (*codes[shift:], *codes[:shift]):
                done = _round(root, code, options, content)
                rounds.append(done)
                out.append(f"round {number + 1} {Path(done.code).name:>10}: baseline "
                           f"{done.baseline.figures()}")
                out.append(f"{'':>19}during   {done.during.figures()}; created in "
                           f"{done.create_s:.1f} s, {done.extra_cores:.2f} cores above "
                           "the baseline's")
                out.append(f"{'':>19}control  {done.control.figures()}")
    out += summary(rounds)
    return "\n".join(out)


def summary(rounds: Sequence[Round]) -> list[str]:
    """Per code: the median over rounds of each p99, and of during / baseline."""
    lines = ["medians over rounds (p99 ms: baseline, during, during/baseline, control "
             "(the creation's CPU burnt by other processes), during/control; creation s):"]
    for code in dict.fromkeys(r.code for r in rounds):
        mine = [r for r in rounds if r.code == code and r.baseline.seconds and r.during.seconds]
        if not mine:
            continue
        base = [percentile(r.baseline.seconds, 0.99) for r in mine]
        during = [percentile(r.during.seconds, 0.99) for r in mine]
        control = [percentile(r.control.seconds, 0.99) if r.control.seconds else math.inf
                   for r in mine]
        ratio = statistics.median(d / b for b, d in zip(base, during, strict=True))
        against = statistics.median(d / c for c, d in zip(control, during, strict=True))
        lines.append(f"  {Path(code).name:>10}: {statistics.median(base) * 1e3:6.1f}  "
                     f"{statistics.median(during) * 1e3:6.1f}  {ratio:4.2f}x  "
                     f"{statistics.median(control) * 1e3:6.1f}  {against:4.2f}x  "
                     f"{statistics.median(r.create_s for r in mine):4.1f} s")
    return lines
