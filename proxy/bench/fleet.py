"""`switchyard bench fleet`: what fleet mode (issue 17: a key's limits and each host's
max_in_flight shared by every replica through Redis) costs a request, and whether replicas add
throughput.

Everything is real and on this machine: `switchyard serve` processes on a PostgreSQL database
and a Redis key prefix of the benchmark's own (both removed afterwards), fake hosts on loopback
sockets that count the calls they serve at once (proxy/bench/counting.py), and hey as the load
generator, one hey process per replica with the workers split evenly: round robin done by the
client, so no balancer process costs CPU or adds a hop (proxy/bench/hey.py says more).

1. Throughput: in each round, one single-process replica (the same serve without
   SWITCHYARD_REDIS_URL, same PostgreSQL) and fleets of N replicas, in turn, against a
   zero-delay host capped at 64 (so the cap never limits); medians over rounds. Each run also
   reads Redis's command counters (round trips per request) and where the CPU went.
2. Added latency: pairs of runs at 1 concurrent with one lean blocking client per side
   (microsecond timing, where hey's is 0.1 ms, and tens of microseconds of its own), single
   and fleet interleaved request by request (which goes first alternating), so both meet the
   same moments of the machine's load; the median of the pairs' p50 differences is what
   fleet mode adds.
3. A capped run: the fleet against two hosts capped at 4 and 2 calls with 50 ms latency, more
   workers than the caps, to show each host's peak against its cap.
4. A batch through the fleet against capped hosts with realistic latencies, beside one process
   (proxy/bench/fleet_batch.py).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from proxy.bench import fleet_batch, hey, load, machine, procs
from proxy.bench.counting import CountingHost, counting_host
from proxy.bench.fleet_procs import (
    DATABASE_URL,
    REDIS_URL,
    RedisCounters,
    Setting,
    fallbacks,
    own_database,
    own_prefix,
    redis_counters,
    replicas,
    say,
)
from proxy.bench.lean_client import LeanClient
from proxy.bench.load import Run
from proxy.bench.machine import CpuSplit
from proxy.bench.procs import BenchError
from proxy.billing.store import Store

FAST = "bench"  # procs.write_routes's provider: the zero-delay host, capped at 64
FAST_CAP = 64
CAPPED_MODEL = "bench-capped"
CAPPED: tuple[tuple[str, int, float], ...] = (("capped-a", 4, 0.01), ("capped-b", 2, 0.02))
CAPPED_DELAY_S = 0.05
LATENCY_PAIRS = 5


@dataclass(frozen=True, slots=True)
class Options:
    database_url: str = DATABASE_URL  # the server the benchmark makes its database on
    redis_url: str = REDIS_URL
    seconds: float = 4.0  # per throughput run
    concurrency: int = 12  # hey workers in all, split over the replicas
    replicas: tuple[int, ...] = (1, 2, 3)
    rounds: int = 3
    latency_requests: int = 200  # per run of a latency pair
    items: int = 10_000  # batch size, as `bench batch`
    time_scale: float = 0.1  # the batch hosts' latencies are multiplied by this

    @property
    def most(self) -> int:
        return max(self.replicas)


def parse_replicas(text: str) -> tuple[int, ...]:
    """'1,2,3' as (1, 2, 3)."""
    try:
        counts = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise ValueError(f"--replicas is a list of counts such as 1,2,3; got {text!r}") \
            from None
    if not counts or counts[0] < 1:
        raise ValueError(f"--replicas needs counts of at least 1; got {text!r}")
    return counts


def options(args: argparse.Namespace) -> Options:
    """Options from `switchyard bench fleet`'s arguments; ValueError names a bad one."""
    counts = parse_replicas(args.replicas)
    if args.concurrency < counts[-1]:
        raise ValueError(f"--concurrency {args.concurrency} leaves a replica of "
                         f"{counts[-1]} without a worker")
    for name in ("rounds", "latency_requests", "items"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    return Options(args.database_url or DATABASE_URL, args.redis_url or REDIS_URL,
                   args.seconds, args.concurrency, counts, args.rounds, args.latency_requests,
                   args.items, args.time_scale)


@dataclass(frozen=True, slots=True)
class Sample:
    """One run of hey against some replicas."""

    load: hey.Result
    cpu: CpuSplit
    peaks: dict[str, int]  # host -> the most calls it served at once during the run
    redis: RedisCounters


@dataclass(frozen=True, slots=True)
class Row:
    """The runs of one mode and replica count, one per round."""

    mode: str  # "single" or "fleet"
    replicas: int
    samples: tuple[Sample, ...]

    def median(self, figure: Callable[[Sample], float]) -> float:
        return statistics.median(figure(s) for s in self.samples)

    @property
    def throughput(self) -> float:
        return self.median(lambda s: s.load.throughput)

    def percentile(self, q: float) -> float:
        return self.median(lambda s: s.load.percentile(q))

    @property
    def not_ok(self) -> int:
        return sum(s.load.answered - s.load.ok for s in self.samples)

    @property
    def cpu_per_request_s(self) -> float:
        return self.median(lambda s: s.cpu.replicas_s / max(1, s.load.answered))

    def peak(self, host: str) -> int:
        return max(s.peaks.get(host, 0) for s in self.samples)


@dataclass(frozen=True, slots=True)
class Pair:
    single: Run
    fleet: Run

    @property
    def added_s(self) -> float:
        return self.fleet.percentile(0.5) - self.single.percentile(0.5)


class Bench:
    """The running pieces of parts 1 to 3: hosts, replicas, the key."""

    def __init__(self, options: Options, hosts: dict[str, CountingHost],
                 fleet: list[procs.Server], single: procs.Server, key: str) -> None:
        self.options = options
        self.hosts = hosts
        self.fleet = fleet
        self.single = single
        self.key = key
        self.pids = [s.pid for s in (*fleet, single)]

    def sample(self, servers: Sequence[procs.Server], body: bytes,
               seconds: float | None = None) -> Sample:
        redis_before = redis_counters(self.options.redis_url)
        before = machine.snapshot(self.pids)
        started = time.monotonic()
        result = hey.drive([s.base_url for s in servers], self.key, body,
                           seconds or self.options.seconds, self.options.concurrency)
        after = machine.snapshot(self.pids)
        redis = redis_counters(self.options.redis_url).since(redis_before)
        peaks = {name: host.peak_since(started) for name, host in self.hosts.items()}
        return Sample(result, machine.split(before, after, result.cpu_s, redis.cpu_s), peaks,
                      redis)

    def throughput(self) -> tuple[Row, ...]:
        """Rounds of single, then each fleet size, in turn."""
        body = load.request_body(2_000)
        configs = [("single", 1), *(("fleet", n) for n in self.options.replicas)]
        runs: defaultdict[tuple[str, int], list[Sample]] = defaultdict(list)
        for round_ in range(self.options.rounds):
            for mode, count in configs:
                say(f"throughput round {round_ + 1}/{self.options.rounds}: {mode} x{count}")
                servers = [self.single] if mode == "single" else self.fleet[:count]
                runs[mode, count].append(self.sample(servers, body))
        return tuple(Row(mode, count, tuple(runs[mode, count])) for mode, count in configs)

    def capped(self) -> Sample:
        say(f"capped run: {self.options.most} replicas, hosts capped at "
            + ", ".join(str(cap) for _, cap, _ in CAPPED))
        body = load.request_body(2_000).replace(procs.MODEL.encode(), CAPPED_MODEL.encode())
        return self.sample(self.fleet[:self.options.most], body)

    def pairs(self) -> tuple[Pair, ...]:
        say(f"latency at 1 concurrent: {LATENCY_PAIRS} pairs")
        return _pairs(self.single.base_url, self.fleet[0].base_url, self.key,
                      self.options.latency_requests)


def _pairs(single_url: str, fleet_url: str, key: str, requests: int) -> tuple[Pair, ...]:
    body = load.request_body(2_000)
    headers = {"authorization": f"Bearer {key}"}
    sides = (LeanClient(single_url, load.PATH, body, headers),
             LeanClient(fleet_url, load.PATH, body, headers))
    try:
        for side in sides:  # a warm connection and warm caches on each side
            for _ in range(20):
                _checked(side.one())
        return tuple(Pair(*_interleaved(sides, requests)) for _ in range(LATENCY_PAIRS))
    finally:
        for side in sides:
            side.close()


def _interleaved(sides: tuple[LeanClient, LeanClient], requests: int) -> tuple[Run, Run]:
    """`requests` requests to each side one at a time, in turn, which goes first
    alternating: run by run, the machine's load drifted by more than fleet mode adds (pairs of
    whole runs differed by -0.51 to +1.37 ms in one bench). The client is a blocking socket
    (proxy/bench/lean_client.py): an httpx client's own millisecond of Python per request
    drifted with the machine as much as what it measured."""
    timed: tuple[list[float], list[float]] = ([], [])
    began = time.perf_counter()
    for i in range(requests):
        for side in (0, 1) if i % 2 == 0 else (1, 0):
            started = time.perf_counter()
            _checked(sides[side].one())
            timed[side].append(time.perf_counter() - started)
    half = (time.perf_counter() - began) / 2
    return Run(half, tuple(sorted(timed[0])), 0.0), Run(half, tuple(sorted(timed[1])), 0.0)


def _checked(reply: tuple[int, bytes]) -> None:
    status, body = reply
    if status != 200 or len(body) < 100:
        raise BenchError(f"{load.PATH} answered {status} with {len(body)} bytes: "
                         f"{body[:300].decode(errors='replace')}")


def write_routes(routes_dir: Path, fast: CountingHost, capped: Sequence[CountingHost]) -> None:
    """procs.write_routes's catalog (one model on the zero-delay host, capped at 64) and a
    second model on the capped hosts, cheapest first."""
    procs.write_routes(routes_dir, fast.port)
    with (routes_dir / "providers.toml").open("a") as providers:
        for (name, cap, _), host in zip(CAPPED, capped, strict=True):
            providers.write(f'\n[{name}]\nprotocol = "openai_images"\n'
                            f'base_url = "http://127.0.0.1:{host.port}/v1"\n'
                            f'key_env = "{procs.KEY_ENV}"\ntimeout_s = 60\n'
                            f"max_in_flight = {cap}\n")
    routes = "".join(f'\n[[routes]]\nprovider = "{name}"\nupstream_model = "m"\n'
                     f'price.per_image = {{ "1K" = {price} }}\noptions.sizes = ["1024x1024"]\n'
                     for name, _, price in CAPPED)
    (routes_dir / "models" / f"{CAPPED_MODEL}.toml").write_text(
        f'name = "{CAPPED_MODEL}"\ndefault_strategy = "cheapest"\n\n[capabilities]\n'
        f'aspect_ratios = ["1:1"]\noutput_formats = ["png"]\n{routes}')


@contextlib.contextmanager
def _hosts() -> Iterator[dict[str, CountingHost]]:
    with contextlib.ExitStack() as stack:
        hosts = {FAST: stack.enter_context(counting_host())}
        for name, _, _ in CAPPED:
            hosts[name] = stack.enter_context(counting_host())
            hosts[name].delay_s = CAPPED_DELAY_S
        yield hosts


@dataclass(frozen=True, slots=True)
class Interactive:
    """Parts 1 to 3."""

    rows: tuple[Row, ...]
    pairs: tuple[Pair, ...]
    capped: Sample
    key: str
    fallbacks: int  # times a fleet replica turned to its own state meanwhile


def interactive(options: Options, root: Path, fleet: Setting, single: Setting) -> Interactive:
    with _hosts() as hosts:
        write_routes(root / "routes", hosts[FAST], [hosts[n] for n, _, _ in CAPPED])
        say(f"starting {options.most} fleet replicas and one single-process replica")
        with replicas(root / "routes", root, options.most, fleet, "fleet") as fleet_servers, \
                replicas(root / "routes", root, 1, single, "single") as single_servers:
            with Store(fleet.database_url) as store:
                key = store.create_key("bench")[1]
            bench = Bench(options, hosts, fleet_servers, single_servers[0], key)
            say("warming up every replica")
            bench.sample([*fleet_servers, *single_servers], load.request_body(2_000), 1.0)
            rows = bench.throughput()
            pairs = bench.pairs()
            capped = bench.capped()
            return Interactive(rows, pairs, capped, key, fallbacks(fleet_servers))


@dataclass(frozen=True, slots=True)
class Measured:
    options: Options
    parts: Interactive
    batches: tuple[fleet_batch.BatchRun, ...]
    database: str  # its name, dropped by now
    prefix: str  # in Redis, its keys deleted by now

    @property
    def caps(self) -> dict[str, int]:
        return {FAST: FAST_CAP, **{name: cap for name, cap, _ in CAPPED}}


def measure(options: Options) -> Measured:
    hey.require()
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix="switchyard-bench-fleet-")))
        database = stack.enter_context(own_database(options.database_url,
                                                    "switchyard_bench_fleet"))
        prefix = stack.enter_context(own_prefix(options.redis_url))
        fleet, single = Setting(database, options.redis_url, prefix), Setting(database)
        parts = interactive(options, root, fleet, single)
        batches = fleet_batch.measure(fleet_batch.Plan(
            root / "batch", parts.key, options.items, options.time_scale, options.most),
            fleet, single)
    return Measured(options, parts, batches, urlsplit(database).path.lstrip("/"), prefix)


def main(options: Options) -> str:
    from proxy.bench import fleet_report

    started = time.perf_counter()
    measured = measure(options)
    return fleet_report.render(measured, time.perf_counter() - started)
