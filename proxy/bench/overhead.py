"""`switchyard bench overhead`: what Switchyard adds to a request, in latency, throughput and
memory, against a fake OpenAI-shaped upstream on a real socket.

Per scenario (payload size x concurrency) a fresh Switchyard is started as a user starts it
(`python -m proxy serve`), so its idle memory is measured clean; then, after a warm-up, each run
sends the same number of requests with the same client straight to the upstream and through
Switchyard. Figures are medians over the runs; latency percentiles are nearest-rank within a run.
The added latency is the median of per-run differences (each proxied run against the direct run
just before it), so a shared machine whose speed drifts between runs compares like with like.
Each run also goes through a bare relay (proxy.bench.relay), which only receives each reply and
sends it on: what it adds is the floor for any proxy that must hold a whole reply before it
answers, and what Switchyard adds over it is Switchyard's own cost.
With `https`, the upstream serves TLS with a certificate made at the start, which the client
trusts and Switchyard trusts through the bench provider's `options.ca_file`. To measure httpx's
path instead of lean connections, name a proxy that is never used:
`HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY=127.0.0.1` (a proxy in the environment turns lean
connections off; NO_PROXY keeps every call direct).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import platform
import ssl
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from proxy.bench import load, procs
from proxy.bench.load import Run, Target

SMALL = 2_000  # base64 characters: the idle-priming request and the small scenario


@dataclass(frozen=True, slots=True)
class Scenario:
    payload_chars: int  # length of the base64 string in the upstream's answer
    concurrency: int

    @property
    def label(self) -> str:
        return f"{size_label(self.payload_chars)} x{self.concurrency}"


SCENARIOS: tuple[Scenario, ...] = (Scenario(SMALL, 1), Scenario(1_400_000, 1),
                                   Scenario(1_400_000, 8), Scenario(6_000_000, 50))
DEFAULT_RUNS = 3
DEFAULT_REQUESTS = 200


def size_label(chars: int) -> str:
    if chars >= 1_000_000:
        return f"{chars / 1e6:g} MB"
    return f"{chars / 1e3:g} KB" if chars >= 1000 else f"{chars} B"


def parse_scenario(text: str) -> Scenario:
    """'1.4MB:8', '2KB:1' or '5000:4' (base64 characters) as a Scenario."""
    size, sep, concurrency = text.upper().replace(" ", "").partition(":")
    scale = {"MB": 1_000_000, "KB": 1_000}
    unit = next((u for u in scale if size.endswith(u)), None)
    try:
        chars = round(float(size[:-2]) * scale[unit]) if unit else int(size)
        scenario = Scenario(chars - chars % 4, int(concurrency) if sep else 1)
    except ValueError:
        raise ValueError(f"a scenario is SIZE:CONCURRENCY, e.g. 1.4MB:8; got {text!r}") \
            from None
    if scenario.payload_chars < 44 or scenario.concurrency < 1:
        raise ValueError(f"scenario {text!r}: at least 44 characters and 1 concurrent")
    return scenario


@dataclass(frozen=True, slots=True)
class Options:
    runs: int = DEFAULT_RUNS
    requests: int = DEFAULT_REQUESTS  # per run, per target
    warmup: int | None = None  # requests per target; None: 2 x concurrency, at least 20
    delay_s: float = 0.0
    scenarios: tuple[Scenario, ...] = SCENARIOS
    # A fresh Switchyard per scenario measures each idle RSS clean; a smoke run shares one.
    fresh_server: bool = True
    loop: str = "auto"  # `switchyard serve --loop`
    http: str = "auto"  # `switchyard serve --http`
    https: bool = False  # the upstream on https (a throwaway certificate)

    @property
    def serve_args(self) -> tuple[str, ...]:
        return ("--loop", self.loop, "--http", self.http)

    @property
    def event_loop(self) -> str:
        """The event loop Switchyard runs on (auto resolved as uvicorn does); the bare relay's."""
        return self.loop if self.loop != "auto" else \
            "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"

    @property
    def server(self) -> str:
        """The event loop and HTTP parser Switchyard runs on."""
        http = self.http if self.http != "auto" else \
            "httptools" if importlib.util.find_spec("httptools") else "h11"
        return f"{self.event_loop} + {http}"

    def warmup_for(self, scenario: Scenario) -> int:
        return self.warmup if self.warmup is not None else max(20, 2 * scenario.concurrency)


QUICK = Options(runs=1, requests=4, warmup=2, fresh_server=False)


def options(quick: bool = False, runs: int | None = None, requests: int | None = None,
            scenarios: Sequence[str] | None = None, delay_s: float = 0.0,
            server: tuple[str, str] = ("auto", "auto"), https: bool = False) -> Options:
    """Options from the command line: --quick's tiny counts unless runs or requests say more."""
    base = QUICK if quick else Options()
    chosen = tuple(parse_scenario(s) for s in scenarios) if scenarios else base.scenarios
    if (runs is not None and runs < 1) or (requests is not None and requests < 1):
        raise ValueError("--runs and --requests must be at least 1")
    if delay_s < 0:
        raise ValueError("--delay must not be negative")
    return replace(base, runs=runs or base.runs, requests=requests or base.requests,
                   scenarios=chosen, delay_s=delay_s, loop=server[0], http=server[1],
                   https=https)


@dataclass(frozen=True, slots=True)
class Row:
    """One scenario's runs, straight and through Switchyard, and Switchyard's memory and CPU."""

    scenario: Scenario
    direct: tuple[Run, ...]
    proxied: tuple[Run, ...]
    relayed: tuple[Run, ...]  # through the bare relay, each just after the proxied run
    idle_rss: int
    peak_rss: tuple[int, ...]  # per proxied run
    proxy_cpu_s: tuple[float, ...]  # per proxied run

    def median(self, runs: Sequence[Run], figure: Callable[[Run], float]) -> float:
        return statistics.median(figure(run) for run in runs)

    def p50(self, runs: Sequence[Run]) -> float:
        return self.median(runs, lambda r: r.percentile(0.50))

    def p99(self, runs: Sequence[Run]) -> float:
        return self.median(runs, lambda r: r.percentile(0.99))

    def throughput(self, runs: Sequence[Run]) -> float:
        return self.median(runs, lambda r: r.throughput)

    @property
    def added_p50_s(self) -> float:
        """The median over runs of each proxied run's p50 less that of the direct run just
        before it: pairs see the same machine, so a shared machine's drifting speed cancels."""
        return _paired(self.direct, self.proxied)

    @property
    def relay_added_p50_s(self) -> float:
        """As added_p50_s, for the bare relay against the same run's direct one."""
        return _paired(self.direct, self.relayed)

    @property
    def over_relay_p50_s(self) -> float:
        """Switchyard's p50 less the bare relay's, run by run: its cost beyond the floor."""
        return _paired(self.relayed, self.proxied)

    @property
    def ratio(self) -> float:
        return self.throughput(self.proxied) / self.throughput(self.direct)

    @property
    def peak_above_idle(self) -> int:
        return int(statistics.median(self.peak_rss)) - self.idle_rss

    @property
    def proxy_cpu_per_request_s(self) -> float:
        return statistics.median(cpu / len(run.latencies_s)
                                 for cpu, run in zip(self.proxy_cpu_s, self.proxied, strict=True))

    @property
    def client_busy(self) -> float:
        """The client's CPU over wall time in the direct runs: near 1 would make it the limit."""
        return self.median(self.direct, lambda r: r.client_cpu_s / r.wall_s)


def _paired(base: Sequence[Run], other: Sequence[Run]) -> float:
    return statistics.median(b.percentile(0.50) - a.percentile(0.50)
                             for a, b in zip(base, other, strict=True))


def measure(options: Options, settings: Mapping[str, str] | None = None) -> tuple[Row, ...]:
    """Every scenario's row; `settings` are more environment variables for Switchyard (an
    OTLP endpoint turns traces on: `--otel`)."""
    sizes = sorted({SMALL, *(s.payload_chars for s in options.scenarios)})
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="switchyard-bench-")))
        cert = procs.throwaway_cert(tmp / "tls") if options.https else None
        port = stack.enter_context(procs.upstream(sizes, options.delay_s, cert))
        routes_dir, data_dir = tmp / "routes", tmp / "data"
        procs.write_routes(routes_dir, port, cert.cert if cert else None)
        direct_url = f"{'https' if cert else 'http'}://127.0.0.1:{port}"
        relay_port = stack.enter_context(procs.relay(port, cert, options.event_loop))
        verify = ssl.create_default_context(cafile=str(cert.cert)) if cert else True
        data_dir.mkdir()
        key = procs.create_key(data_dir)
        rows = []
        shared = None if options.fresh_server else \
            stack.enter_context(procs.switchyard(routes_dir, data_dir, options.serve_args,
                                                 settings))
        for scenario in options.scenarios:
            with contextlib.ExitStack() as inner:
                server = shared or inner.enter_context(
                    procs.switchyard(routes_dir, data_dir, options.serve_args, settings))
                rows.append(asyncio.run(_scenario(
                    scenario, options, Target(direct_url, scenario.concurrency, verify=verify),
                    Target(server.base_url, scenario.concurrency,
                           {"authorization": f"Bearer {key}"}),
                    Target(f"http://127.0.0.1:{relay_port}", scenario.concurrency), server.pid)))
        return tuple(rows)


async def _scenario(scenario: Scenario, options: Options, direct: Target, proxied: Target,
                    relay: Target, pid: int) -> Row:
    body, size = load.request_body(scenario.payload_chars), scenario.payload_chars
    try:
        await proxied.one(load.request_body(SMALL), SMALL)  # lazy imports, pools, caches
        idle = procs.rss_bytes(pid)
        await load.same_image(direct, proxied, body, size)
        warmup = options.warmup_for(scenario)
        for target in (direct, proxied, relay):
            await target.run(body, size, warmup, scenario.concurrency)
        straight, through, relayed, peaks, cpus = [], [], [], [], []
        for _ in range(options.runs):
            straight.append(await direct.run(body, size, options.requests, scenario.concurrency))
            cpu = procs.cpu_seconds(pid)
            with procs.PeakMemory(pid) as memory:
                through.append(await proxied.run(body, size, options.requests,
                                                 scenario.concurrency))
            cpus.append(procs.cpu_seconds(pid) - cpu)
            peaks.append(memory.peak)
            relayed.append(await relay.run(body, size, options.requests, scenario.concurrency))
    finally:
        for target in (direct, proxied, relay):
            await target.aclose()
    return Row(scenario, tuple(straight), tuple(through), tuple(relayed), idle, tuple(peaks),
               tuple(cpus))


# --- the report ---------------------------------------------------------------------------

# The targets of issue 8 (one worker, zero-delay upstream, medians).
MAX_ADDED_P50_S = {(SMALL, 1): 0.001, (1_400_000, 1): 0.003}
MIN_RATIO = (1_400_000, 8, 0.40)
MAX_MEMORY = (6_000_000, 50, 50 * 2**20)  # above idle, besides one copy of each payload in flight

_HEADER = ("payload", "conc", "direct req/s", "proxied req/s", "ratio", "direct p50/p99 ms",
           "proxied p50/p99 ms", "added p50 ms", "bare relay ms", "over relay ms",
           "peak RSS +MB", "proxy CPU ms/req")


def render(rows: Sequence[Row], options: Options, wall_s: float) -> str:
    lines = [
        "Switchyard overhead: one worker (python -m proxy serve, on "
        f"{options.server}), fake openai_images upstream in its own process"
        f"{' on https' if options.https else ''}, upstream delay {options.delay_s:g} s",
        f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"httpx {httpx.__version__} client (one process, pooled); "
        f"{options.runs} run(s) x {options.requests} requests per target and scenario after "
        "warm-up; medians of runs (added p50: the median of each run's difference with the "
        "direct run just before it); bare relay: the added p50 of proxy.bench.relay, which only "
        "receives each reply whole and sends it on (the floor for a proxy that holds a reply "
        "before answering); over relay: Switchyard's p50 less the relay's, run by run", "",
    ]
    table = [_HEADER, *(_cells(row) for row in rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(_HEADER))]
    for cells in table:
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(cells, widths, strict=True))))
    lines += ["", "client CPU / wall in the direct runs (near 100% would cap the direct figures): "
              + ", ".join(f"{r.scenario.label} {r.client_busy:.0%}" for r in rows),
              "peak RSS: Switchyard's VmHWM (reset per run via clear_refs) and VmRSS sampled "
              "during each run, above its idle RSS after one 2 KB request: "
              + ", ".join(f"{r.scenario.label} idle {r.idle_rss / 2**20:.0f} MB" for r in rows),
              "", "Targets (issue 8)"]
    lines += targets(rows) or ["(none of the target scenarios ran)"]
    lines += ["", f"wall time {wall_s:.1f} s"]
    return "\n".join(lines)


def _cells(row: Row) -> tuple[str, ...]:
    ms = 1000.0
    return (size_label(row.scenario.payload_chars), str(row.scenario.concurrency),
            f"{row.throughput(row.direct):.1f}", f"{row.throughput(row.proxied):.1f}",
            f"{row.ratio:.0%}",
            f"{row.p50(row.direct) * ms:.2f} / {row.p99(row.direct) * ms:.2f}",
            f"{row.p50(row.proxied) * ms:.2f} / {row.p99(row.proxied) * ms:.2f}",
            f"{row.added_p50_s * ms:.2f}", f"{row.relay_added_p50_s * ms:.2f}",
            f"{row.over_relay_p50_s * ms:.2f}", f"{row.peak_above_idle / 2**20:.1f}",
            f"{row.proxy_cpu_per_request_s * ms:.2f}")


def targets(rows: Sequence[Row]) -> list[str]:
    found = {(r.scenario.payload_chars, r.scenario.concurrency): r for r in rows}
    lines = []
    for (chars, conc), limit in MAX_ADDED_P50_S.items():
        if (row := found.get((chars, conc))) is not None:
            lines.append(f"{_verdict(row.added_p50_s <= limit)} {row.scenario.label}: added p50 "
                         f"{row.added_p50_s * 1000:.2f} ms <= {limit * 1000:g} ms")
    chars, conc, share = MIN_RATIO
    if (row := found.get((chars, conc))) is not None:
        lines.append(f"{_verdict(row.ratio >= share)} {row.scenario.label}: proxied throughput "
                     f"{row.ratio:.0%} of direct >= {share:.0%}")
    chars, conc, extra = MAX_MEMORY
    if (row := found.get((chars, conc))) is not None:
        payloads = conc * chars
        above = row.peak_above_idle
        lines.append(f"{_verdict(above < extra + payloads)} {row.scenario.label}: peak RSS "
                     f"{above / 2**20:.0f} MB above idle < {extra / 2**20:.0f} MB + the "
                     f"{conc} payloads in flight ({payloads / 2**20:.0f} MB); "
                     f"{above / payloads:.1f} payload copies per request")
    return lines


def _verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def main(options: Options) -> str:
    """The printed report, wall time included."""
    started = time.perf_counter()
    rows = measure(options)
    return render(rows, options, time.perf_counter() - started)
