"""`switchyard bench overhead`: what Switchyard adds to a request, in latency, CPU, throughput and
memory, against a fake OpenAI-shaped host on a real socket, measured so it cannot flatter us.

Every side is driven by `hey` (Go, one process; its own CPU is measured and printed): the host
direct, a bare relay (proxy.bench.relay: it only receives each reply whole and sends it on, the
floor for any proxy that must hold a reply before answering), and Switchyard as a user starts it
(`python -m proxy serve`, fresh per scenario so its idle memory is measured clean), and with
`--workers N` Switchyard on N workers too. The host answers real PNG or JPEG images of the
stated size (proxy.bench.real_images), so sniffing and verification run on what hosts send.

Each round runs every side once for a few seconds, the first side rotating; figures are medians
over rounds, and differences (added p50, CPU over the relay) are medians of each round's
difference, so a shared machine's drift hits both sides of a pair alike. A ratio to a side is
printed only when hey stayed under CLIENT_LIMIT of a core on both sides: above it, the client
may have set the pace, and the report says so instead. The headline is Switchyard's own cost
over the relay per request, in CPU and p50: that holds whatever the machine's noise.
With `https`, the host serves TLS with a certificate made at the start (Switchyard trusts it
through the bench provider's `options.ca_file`; hey does not check certificates).
"""

from __future__ import annotations

import contextlib
import importlib.util
import ssl
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import orjson

from proxy.bench import procs, sides
from proxy.bench.procs import MODEL, BenchError
from proxy.bench.sides import Run, Side

SMALL = 2_000  # base64 characters: the idle-priming request and the small scenarios
CLIENT_LIMIT = 0.70  # of a core: above it a ratio to that side is not printed


@dataclass(frozen=True, slots=True)
class Scenario:
    payload_chars: int  # length of the base64 string in the upstream's answer
    concurrency: int
    fmt: str = "png"

    @property
    def label(self) -> str:
        return f"{size_label(self.payload_chars)} x{self.concurrency} {self.fmt}"


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(SMALL, 1), Scenario(SMALL, 64), Scenario(1_400_000, 1), Scenario(1_400_000, 8),
    Scenario(1_400_000, 8, "jpeg"), Scenario(6_000_000, 50))
DEFAULT_RUNS = 3
DEFAULT_SECONDS = 2.0


def size_label(chars: int) -> str:
    if chars >= 1_000_000:
        return f"{chars / 1e6:g} MB"
    return f"{chars / 1e3:g} KB" if chars >= 1000 else f"{chars} B"


def parse_scenario(text: str) -> Scenario:
    """'1.4MB:8', '2KB:1', '1.4MB:8:jpeg' or '5000:4' (base64 characters) as a Scenario."""
    size, _, rest = text.upper().replace(" ", "").partition(":")
    concurrency, _, fmt = rest.partition(":")
    scale = {"MB": 1_000_000, "KB": 1_000}
    unit = next((u for u in scale if size.endswith(u)), None)
    try:
        chars = round(float(size[:-2]) * scale[unit]) if unit else int(size)
        scenario = Scenario(chars - chars % 4, int(concurrency) if concurrency else 1,
                            fmt.lower() or "png")
    except ValueError:
        raise ValueError("a scenario is SIZE:CONCURRENCY[:png|jpeg], e.g. 1.4MB:8; got "
                         f"{text!r}") from None
    if scenario.payload_chars < 2_000 or scenario.concurrency < 1 \
            or scenario.fmt not in ("png", "jpeg"):
        raise ValueError(f"scenario {text!r}: at least 2KB, 1 concurrent, png or jpeg")
    return scenario


@dataclass(frozen=True, slots=True)
class Options:
    runs: int = DEFAULT_RUNS
    seconds: float = DEFAULT_SECONDS  # per run and side
    warmup_s: float = 0.5  # per side, before the rounds
    delay_s: float = 0.0
    scenarios: tuple[Scenario, ...] = SCENARIOS
    # A fresh Switchyard per scenario measures each idle RSS clean; a smoke run shares one.
    fresh_server: bool = True
    loop: str = "auto"  # `switchyard serve --loop`
    http: str = "auto"  # `switchyard serve --http`
    https: bool = False  # the upstream on https (a throwaway certificate)
    workers: int = 1  # above 1: Switchyard on this many workers too, beside one

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


QUICK = Options(runs=1, seconds=0.3, warmup_s=0.1, fresh_server=False)


def options(quick: bool = False, runs: int | None = None, seconds: float | None = None,
            scenarios: Sequence[str] | None = None, delay_s: float = 0.0,
            server: tuple[str, str] = ("auto", "auto"), https: bool = False,
            workers: int = 1) -> Options:
    """Options from the command line: --quick's tiny counts unless runs or seconds say more."""
    base = QUICK if quick else Options()
    chosen = tuple(parse_scenario(s) for s in scenarios) if scenarios else base.scenarios
    if (runs is not None and runs < 1) or (seconds is not None and seconds <= 0):
        raise ValueError("--runs must be at least 1 and --seconds above 0")
    if delay_s < 0 or workers < 1:
        raise ValueError("--delay must not be negative, --workers at least 1")
    return replace(base, runs=runs or base.runs, seconds=seconds or base.seconds,
                   scenarios=chosen, delay_s=delay_s, loop=server[0], http=server[1],
                   https=https, workers=workers)


@dataclass(frozen=True, slots=True)
class Row:
    """One scenario's rounds on every side, and Switchyard's memory."""

    scenario: Scenario
    direct: tuple[Run, ...]
    relayed: tuple[Run, ...]
    proxied: tuple[Run, ...]
    workers: tuple[Run, ...]  # Switchyard on Options.workers workers; () with one
    idle_rss: int
    peak_rss: tuple[int, ...]  # per proxied run

    def median(self, runs: Sequence[Run], figure: Callable[[Run], float]) -> float:
        return statistics.median(figure(run) for run in runs)

    def p50(self, runs: Sequence[Run]) -> float:
        return self.median(runs, lambda r: r.percentile(0.50))

    def p99(self, runs: Sequence[Run]) -> float:
        return self.median(runs, lambda r: r.percentile(0.99))

    def throughput(self, runs: Sequence[Run]) -> float:
        return self.median(runs, lambda r: r.throughput)

    def cpu_per_request(self, runs: Sequence[Run]) -> float:
        return self.median(runs, lambda r: r.cpu_per_request_s)

    def client_cores(self, runs: Sequence[Run]) -> float:
        return self.median(runs, lambda r: r.client_cores)

    @property
    def added_p50_s(self) -> float:
        """Switchyard's p50 less the host's, round by round (median)."""
        return _paired(self.direct, self.proxied, lambda r: r.percentile(0.5))

    @property
    def relay_added_p50_s(self) -> float:
        return _paired(self.direct, self.relayed, lambda r: r.percentile(0.5))

    @property
    def over_relay_p50_s(self) -> float:
        """Switchyard's p50 less the bare relay's, round by round: its own latency."""
        return _paired(self.relayed, self.proxied, lambda r: r.percentile(0.5))

    @property
    def proxy_cpu_per_request_s(self) -> float:
        return self.cpu_per_request(self.proxied)

    @property
    def over_relay_cpu_s(self) -> float:
        """Switchyard's CPU per request less the relay's, round by round: its own CPU."""
        return _paired(self.relayed, self.proxied, lambda r: r.cpu_per_request_s)

    @property
    def ratio(self) -> float:
        return self.throughput(self.proxied) / self.throughput(self.direct)

    def share_of(self, base: Sequence[Run]) -> tuple[float | None, str]:
        """Switchyard's req/s over `base`'s, or None and why when hey may have set the pace
        on either side."""
        busiest = max(self.client_cores(base), self.client_cores(self.proxied))
        if busiest > CLIENT_LIMIT:
            return None, f"hey at {busiest:.0%} of a core > {CLIENT_LIMIT:.0%}"
        return self.throughput(self.proxied) / self.throughput(base), ""

    @property
    def peak_above_idle(self) -> int:
        return int(statistics.median(self.peak_rss)) - self.idle_rss if self.peak_rss else 0

    @property
    def errors_5xx(self) -> int:
        return sum(r.errors_5xx for r in (*self.proxied, *self.workers))


def _paired(base: Sequence[Run], other: Sequence[Run], figure: Callable[[Run], float]) -> float:
    return statistics.median(figure(b) - figure(a) for a, b in zip(base, other, strict=True))


def request_body(scenario: Scenario) -> bytes:
    """A generation the proxy passes through untouched; the prompt and format pick the host's
    reply."""
    return orjson.dumps({"model": MODEL, "prompt": f"bench payload={scenario.payload_chars}",
                         "size": "1024x1024", "output_format": scenario.fmt})


def measure(options: Options, settings: Mapping[str, str] | None = None) -> tuple[Row, ...]:
    """Every scenario's row; `settings` are more environment variables for Switchyard (an
    OTLP endpoint turns traces on: `--otel`)."""
    sizes = sorted({SMALL, *(s.payload_chars for s in options.scenarios)})
    formats = sorted({"png", *(s.fmt for s in options.scenarios)})
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="switchyard-bench-")))
        cert = procs.throwaway_cert(tmp / "tls") if options.https else None
        port = stack.enter_context(procs.upstream(sizes, options.delay_s, cert, formats))
        routes_dir, data_dir = tmp / "routes", tmp / "data"
        procs.write_routes(routes_dir, port, cert.cert if cert else None)
        relay_port = stack.enter_context(procs.relay(port, cert, options.event_loop))
        scheme = "https" if cert else "http"
        direct = Side("direct", f"{scheme}://127.0.0.1:{port}",
                      (sides.child_running("proxy.bench.upstream"),),
                      ca_file=cert.cert if cert else None)
        relay = Side("relay", f"http://127.0.0.1:{relay_port}",
                     (sides.child_running("proxy.bench.relay"),))
        data_dir.mkdir()
        key = procs.create_key(data_dir)

        def start(workers: int) -> contextlib.AbstractContextManager[procs.Server]:
            extra = ("--workers", str(workers)) if workers > 1 else ()
            return procs.switchyard(routes_dir, data_dir, (*options.serve_args, *extra),
                                    settings)

        rows = []
        shared = None if options.fresh_server else stack.enter_context(start(1))
        for scenario in options.scenarios:
            with contextlib.ExitStack() as inner:
                server = shared or inner.enter_context(start(1))
                auth = {"authorization": f"Bearer {key}"}
                proxied = Side("switchyard", server.base_url, (server.pid,), auth)
                many = None
                if options.workers > 1:
                    pool = inner.enter_context(start(options.workers))
                    many = Side(f"{options.workers} workers", pool.base_url, (pool.pid,), auth)
                rows.append(_scenario(scenario, options, (direct, relay, proxied), many))
        return tuple(rows)


def _scenario(scenario: Scenario, options: Options, trio: tuple[Side, Side, Side],
              many: Side | None) -> Row:
    direct, relay, proxied = trio
    body = request_body(scenario)
    pid = proxied.pids[0]
    _one(proxied, request_body(Scenario(SMALL, 1)))  # lazy imports, pools, caches
    idle = procs.rss_bytes(pid)
    expected = _one(direct, body)
    for side in (relay, proxied, *([many] if many else [])):
        if _one(side, body) != expected:
            raise BenchError(f"the image that came through {side.name} differs from the host's")
    everyone = [direct, relay, proxied, *([many] if many else [])]
    for side in everyone:
        sides.drive(side, body, options.warmup_s, scenario.concurrency)
    runs: dict[str, list[Run]] = {side.name: [] for side in everyone}
    peaks = []
    for order in sides.interleaved(everyone, options.runs):
        for side in order:
            if side is proxied:
                with procs.PeakMemory(pid) as memory:
                    runs[side.name].append(sides.drive(side, body, options.seconds,
                                                       scenario.concurrency))
                peaks.append(memory.peak)
            else:
                runs[side.name].append(sides.drive(side, body, options.seconds,
                                                   scenario.concurrency))
    return Row(scenario, tuple(runs["direct"]), tuple(runs["relay"]), tuple(runs["switchyard"]),
               tuple(runs[many.name]) if many else (), idle, tuple(peaks))


def _one(side: Side, body: bytes) -> str:
    """One request's image (base64), checked to be a 200 with one."""
    response = httpx.post(f"{side.base_url}/v1/images/generations", content=body,
                          headers={"content-type": "application/json", **(side.headers or {})},
                          timeout=120.0,
                          verify=ssl.create_default_context(cafile=side.ca_file)
                          if side.ca_file else True)
    if response.status_code != 200:
        raise BenchError(f"{side.name} answered {response.status_code}: {response.text[:300]}")
    image: str = orjson.loads(response.content)["data"][0]["b64_json"]
    return image


def render(rows: Sequence[Row], options: Options, wall_s: float) -> str:
    from proxy.bench import overhead_report

    return overhead_report.render(rows, options, wall_s)


def main(options: Options) -> str:
    """The printed report, wall time included."""
    started = time.perf_counter()
    rows = measure(options)
    return render(rows, options, time.perf_counter() - started)
