"""The overhead benchmark's printed report: per scenario one line per side (the host direct, the
bare relay, Switchyard, and Switchyard on N workers), the client's and the machine's CPU beside
each figure, Switchyard's own cost over the relay as the headline, then issue 21's targets."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence

from proxy.bench.overhead import CLIENT_LIMIT, SMALL, Options, Row
from proxy.bench.sides import Run

MS = 1000.0
BIG = 1_400_000
HUGE = 6_000_000
# Issue 21's targets (one worker, medians of interleaved rounds).
MIN_SHARE_OF_DIRECT, MIN_SHARE_OF_RELAY = 0.35, 0.75  # 1.4 MB x 8
MAX_ADDED_P50_S, MAX_CPU_BIG_S = 0.0015, 0.0012  # 1.4 MB x 1
MAX_CPU_SMALL_S, MIN_SMALL_RPS = 0.0005, 1800.0  # 2 KB; 2 KB x 64
MAX_MEMORY = 50 * 2**20  # 6 MB x 50: above idle, besides one copy of each payload in flight
MIN_WORKER_GAIN = 1.8  # --workers 2 against one, at 2 KB x 64 and 1.4 MB x 8

_HEADER = ("scenario", "side", "req/s", "p50 ms", "p99 ms", "server CPU ms/req",
           "hey cores", "machine busy cores", "non-200")


def render(rows: Sequence[Row], options: Options, wall_s: float) -> str:
    lines = [
        f"Switchyard overhead: python -m proxy serve on {options.server}, one worker"
        + (f" and {options.workers}" if options.workers > 1 else "")
        + f"; fake openai_images host in its own process{' on https' if options.https else ''}"
        f", real PNG/JPEG replies, host delay {options.delay_s:g} s",
        f"machine: {os.cpu_count()} cores, Python {platform.python_version()}, {_hey()} as the "
        f"client (Go, one process); load average {_loadavg()} now",
        f"{options.runs} round(s) per scenario, each side {options.seconds:g} s a round after a "
        f"{options.warmup_s:g} s warm-up, the first side rotating; medians of rounds; "
        "differences are medians of each round's difference",
        "relay: proxy.bench.relay, which only receives each reply whole and sends it on (the "
        "floor for a proxy that must hold a reply before answering)", "",
    ]
    table: list[tuple[str, ...]] = [_HEADER]
    for row in rows:
        for name, runs in _sides(row, options):
            table.append(_cells(row, name, runs))
    lines += _aligned(table)
    lines += ["", "Switchyard's own cost (over the relay, per request), and its share of the "
              "others' req/s:"]
    lines += [_headline(row, options) for row in rows]
    lines += ["", f"A share is printed only when hey stayed under {CLIENT_LIMIT:.0%} of a core on "
              "both sides: above that the client may have set the pace. Peak RSS: Switchyard's "
              "VmHWM (reset per run) and VmRSS sampled during each run, above its idle RSS "
              "after one 2 KB request: " + ", ".join(
                  f"{r.scenario.label} {r.peak_above_idle / 2**20:+.1f} MB "
                  f"(idle {r.idle_rss / 2**20:.0f} MB)" for r in rows),
              "", "Targets (issue 21)"]
    lines += targets(rows, options.workers) or ["(none of the target scenarios ran)"]
    lines += ["", f"load average {_loadavg()} at the end; wall time {wall_s:.1f} s"]
    return "\n".join(lines)


def _sides(row: Row, options: Options) -> list[tuple[str, Sequence[Run]]]:
    found: list[tuple[str, Sequence[Run]]] = [
        ("direct", row.direct), ("relay", row.relayed), ("switchyard", row.proxied)]
    if row.workers:
        found.append((f"{options.workers} workers", row.workers))
    return found


def _cells(row: Row, name: str, runs: Sequence[Run]) -> tuple[str, ...]:
    statuses = sum((r.statuses for r in runs), start=type(runs[0].statuses)())
    odd = sum(n for status, n in statuses.items() if status != "200")
    cpu = "-" if name == "direct" and not runs[0].server_cpu_s else \
        f"{row.cpu_per_request(runs) * MS:.3f}"
    return (row.scenario.label if name == "direct" else "", name,
            f"{row.throughput(runs):.0f}", f"{row.p50(runs) * MS:.2f}",
            f"{row.p99(runs) * MS:.2f}", cpu, f"{row.client_cores(runs):.2f}",
            f"{row.median(runs, lambda r: r.busy_cores):.2f}", str(odd))


def _aligned(table: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return ["  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                      for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
            for cells in table]


def _headline(row: Row, options: Options) -> str:
    of_relay, why_relay = row.share_of(row.relayed)
    of_direct, why_direct = row.share_of(row.direct)
    text = (f"  {row.scenario.label}: {row.over_relay_p50_s * MS:+.2f} ms p50, "
            f"{row.over_relay_cpu_s * MS:+.3f} ms CPU (added p50 over the host's: relay "
            f"{row.relay_added_p50_s * MS:+.2f}, Switchyard {row.added_p50_s * MS:+.2f} ms); "
            f"req/s: {_share(of_relay, why_relay)} of the relay's, "
            f"{_share(of_direct, why_direct)} of direct's")
    if row.workers:
        gain = row.throughput(row.workers) / row.throughput(row.proxied)
        text += (f"; {options.workers} workers {gain:.2f}x one worker's req/s, p99 "
                 f"{row.p99(row.workers) * MS:.2f} vs {row.p99(row.proxied) * MS:.2f} ms")
    return text


def _share(value: float | None, why: str) -> str:
    return f"{value:.0%}" if value is not None else f"withheld ({why})"


def targets(rows: Sequence[Row], workers: int = 1) -> list[str]:
    found = {(r.scenario.payload_chars, r.scenario.concurrency, r.scenario.fmt): r
             for r in rows}
    lines: list[str] = []
    if (row := found.get((BIG, 8, "png"))) is not None:
        for base, name, least in ((row.direct, "direct", MIN_SHARE_OF_DIRECT),
                                  (row.relayed, "the relay", MIN_SHARE_OF_RELAY)):
            share, why = row.share_of(base)
            verdict = "N/A " if share is None else _verdict(share >= least)
            lines.append(f"{verdict} {row.scenario.label}: req/s {_share(share, why)} of "
                         f"{name}'s >= {least:.0%}")
    if (row := found.get((BIG, 1, "png"))) is not None:
        lines += [f"{_verdict(row.added_p50_s <= MAX_ADDED_P50_S)} {row.scenario.label}: added "
                  f"p50 {row.added_p50_s * MS:.2f} ms <= {MAX_ADDED_P50_S * MS:g} ms",
                  _cpu_line(row, MAX_CPU_BIG_S)]
    for conc in (1, 64):
        if (row := found.get((SMALL, conc, "png"))) is not None:
            lines.append(_cpu_line(row, MAX_CPU_SMALL_S))
    if (row := found.get((SMALL, 64, "png"))) is not None:
        rps = row.throughput(row.proxied)
        lines.append(f"{_verdict(rps >= MIN_SMALL_RPS)} {row.scenario.label}: {rps:.0f} req/s "
                     f">= {MIN_SMALL_RPS:.0f}")
    if (row := found.get((HUGE, 50, "png"))) is not None:
        lines.append(_memory_line(row))
    lines += [_workers_line(found[key], workers)
              for key in ((SMALL, 64, "png"), (BIG, 8, "png"))
              if key in found and found[key].workers]
    return lines


def _cpu_line(row: Row, limit: float) -> str:
    cpu = row.proxy_cpu_per_request_s
    return (f"{_verdict(cpu <= limit)} {row.scenario.label}: CPU {cpu * MS:.3f} ms per request "
            f"<= {limit * MS:g} ms")


def _memory_line(row: Row) -> str:
    payloads = row.scenario.concurrency * row.scenario.payload_chars
    above = row.peak_above_idle
    passed = above < MAX_MEMORY + payloads and row.errors_5xx == 0
    return (f"{_verdict(passed)} {row.scenario.label}: peak RSS {above / 2**20:.0f} MB above "
            f"idle < {MAX_MEMORY / 2**20:.0f} MB + the payloads in flight "
            f"({payloads / 2**20:.0f} MB), and {row.errors_5xx} 5xx")


def _workers_line(row: Row, workers: int) -> str:
    gain = row.throughput(row.workers) / row.throughput(row.proxied)
    p99_many, p99_one = row.p99(row.workers), row.p99(row.proxied)
    passed = gain >= MIN_WORKER_GAIN and p99_many <= p99_one
    cores = os.cpu_count() or 1
    most, server, rest = workers_ceiling(row, workers, cores)
    return (f"{_verdict(passed)} {row.scenario.label}: workers {gain:.2f}x one worker's req/s "
            f">= {MIN_WORKER_GAIN:g}x, p99 {p99_many * MS:.2f} <= {p99_one * MS:.2f} ms; the "
            f"most this machine allows is {most:.2f}x, since a request costs {server * MS:.2f} "
            f"ms of Switchyard's core and {rest * MS:.2f} ms of the others' (hey, the fake "
            f"host) on the same {cores} cores")


def workers_ceiling(row: Row, workers: int, cores: int) -> tuple[float, float, float]:
    """The most `workers` workers can serve over one on this machine, from where the one
    worker's runs spent CPU: (ratio, Switchyard's ms per request, everything else's). One
    worker is one event loop, bound by its core (1 / its CPU per request); N are bound by
    the machine (cores / everything's CPU per request), as hey and the fake host share the
    cores. The fleet benchmark's ceiling, for workers."""
    server = row.cpu_per_request(row.proxied)
    busy = row.median(row.proxied, lambda r: r.busy_s / max(1, len(r.latencies_s)))
    rest = max(0.0, busy - server)
    if server <= 0:
        return 0.0, 0.0, rest
    return min(float(workers), cores * server / (server + rest)), server, rest


def _verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def _loadavg() -> str:
    with open("/proc/loadavg") as load:
        return " ".join(load.read().split()[:3])


def _hey() -> str:
    found = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "hey"], capture_output=True,
                           text=True, check=False)
    return f"hey {found.stdout.strip()}" if found.returncode == 0 and found.stdout else "hey"
