"""`switchyard bench overhead --otel`: what traces cost when they are on.

The same benchmark (proxy/bench/overhead.py) twice per scenario, one right after the other so
a shared machine's drift hits both alike: Switchyard with no OTEL_* variable (traces off: no
OpenTelemetry import at all), then with OTEL_EXPORTER_OTLP_ENDPOINT pointing at a local OTLP/HTTP
receiver in its own process (proxy/bench/otlp_sink.py), which decodes and counts what it gets.
The batch span processor's defaults are the operator's (OTEL_BSP_* pass through). Prints both
reports and the difference: added latency, CPU per request, throughput and memory.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

import httpx

from proxy.bench import overhead, procs
from proxy.bench.overhead import Options, Row


def measure(options: Options) -> tuple[tuple[Row, ...], tuple[Row, ...], dict[str, int]]:
    """(rows with traces off, rows with traces on, what the receiver counted)."""
    off: list[Row] = []
    on: list[Row] = []
    with procs.otlp_sink() as port:
        settings = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                    "OTEL_SERVICE_NAME": "switchyard-bench"}
        for scenario in options.scenarios:
            one = replace(options, scenarios=(scenario,))
            off += overhead.measure(one)
            on += overhead.measure(one, settings)
        counts: dict[str, int] = httpx.get(f"http://127.0.0.1:{port}/count").json()
    return tuple(off), tuple(on), counts


_HEADER = ("payload", "conc", "added p50 ms off/on", "+ms", "CPU ms/req off/on", "+ms",
           "req/s off/on", "on/off", "peak RSS +MB off/on", "idle RSS MB off/on")


def difference(off: Sequence[Row], on: Sequence[Row]) -> list[str]:
    """One line per scenario: each figure with traces off and on, and what tracing adds."""
    ms = 1000.0
    table = [_HEADER]
    for a, b in zip(off, on, strict=True):
        cpu_a, cpu_b = a.proxy_cpu_per_request_s * ms, b.proxy_cpu_per_request_s * ms
        rps_a, rps_b = a.throughput(a.proxied), b.throughput(b.proxied)
        table.append((
            overhead.size_label(a.scenario.payload_chars), str(a.scenario.concurrency),
            f"{a.added_p50_s * ms:.2f} / {b.added_p50_s * ms:.2f}",
            f"{(b.added_p50_s - a.added_p50_s) * ms:+.2f}",
            f"{cpu_a:.2f} / {cpu_b:.2f}", f"{cpu_b - cpu_a:+.2f}",
            f"{rps_a:.1f} / {rps_b:.1f}", f"{rps_b / rps_a:.0%}",
            f"{a.peak_above_idle / 2**20:.1f} / {b.peak_above_idle / 2**20:.1f}",
            f"{a.idle_rss / 2**20:.0f} / {b.idle_rss / 2**20:.0f}"))
    widths = [max(len(row[i]) for row in table) for i in range(len(_HEADER))]
    return ["  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                      for i, (c, w) in enumerate(zip(row, widths, strict=True)))
            for row in table]


def render(off: Sequence[Row], on: Sequence[Row], counts: dict[str, int], options: Options,
           wall_s: float) -> str:
    sent = sum(len(run.latencies_s) for row in on for run in row.proxied)
    lines = ["== traces off (no OTEL_* variable) ==",
             overhead.render(off, options, 0.0).rsplit("\n", 2)[0], "",
             "== traces on (OTLP/HTTP to a local receiver, batch span processor) ==",
             overhead.render(on, options, 0.0).rsplit("\n", 2)[0], "",
             "== what traces add (on less off; medians as above) ==", *difference(off, on), "",
             f"the receiver got {counts['spans']:,} spans in {counts['exports']:,} exports "
             f"({counts['bytes'] / 2**20:.1f} MB of protobuf); the measured runs alone sent "
             f"{sent:,} image requests (5 spans each: server, route, attempt, submit, ledger), "
             "warm-ups and health probes sent more", "", f"wall time {wall_s:.1f} s"]
    return "\n".join(lines)


def main(options: Options) -> str:
    started = time.perf_counter()
    off, on, counts = measure(options)
    return render(off, on, counts, options, time.perf_counter() - started)
