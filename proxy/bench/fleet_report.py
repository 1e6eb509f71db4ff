"""The fleet benchmark's report: throughput by replica count, where the CPU went, Redis's
commands per request, fleet mode's added latency, each host's peak against its cap, the batch,
and the targets of issue 17 ("Proof") as met or missed, never rounded into a pass."""

from __future__ import annotations

import os
import platform
import re
import statistics
from collections import Counter
from collections.abc import Sequence

from proxy.bench import batch
from proxy.bench.fleet import (
    CAPPED,
    CAPPED_DELAY_S,
    CAPPED_MODEL,
    FAST,
    LATENCY_PAIRS,
    Measured,
    Options,
    Row,
    Sample,
)
from proxy.bench.fleet_batch import BatchRun
from proxy.bench.hey import shares

MAX_ADDED_P50_S = 0.0005
MIN_TWO_OVER_ONE = 1.7
MAX_PER_REPLICA_LOSS = 0.15
MS = 1000.0


def render(m: Measured, wall_s: float) -> str:
    o = m.options
    lines = [
        "Switchyard fleet benchmark: `switchyard serve` replicas on PostgreSQL (a database of "
        "the benchmark's own) and, in fleet mode, Redis (a key prefix of its own); "
        "single-process mode is the same serve without SWITCHYARD_REDIS_URL",
        f"machine: {os.cpu_count()} cores, Python {platform.python_version()}; load: hey, one "
        f"process per replica, {o.concurrency} workers in all split evenly (round robin from "
        f"the client); a zero-delay counting host capped at {m.caps[FAST]}; {o.rounds} "
        f"round(s) of {o.seconds:g} s per row, rows interleaved; figures are medians of rounds",
        f"database {m.database} and Redis prefix {m.prefix}, both removed; fleet replicas "
        f"that turned to their own state because Redis was slow or away: "
        f"{m.parts.fallbacks + sum(b.fallbacks for b in m.batches)} times (each makes a "
        "stretch of a fleet run single-process)",
        "", *_throughput(m.parts.rows, o, m.caps[FAST]), "", *_cpu(m.parts.rows), "",
        *_redis(m.parts.rows), "", *_latency(m), "", *_capped(m.parts.capped, m.caps, o), "",
        *_batches(m.batches, o), "",
        "Targets (issue 17, Proof)", *targets(m), "", f"wall time {wall_s:.0f} s"]
    return "\n".join(lines)


def _throughput(rows: Sequence[Row], o: Options, cap: int) -> list[str]:
    out = [f"{'mode':<7}{'replicas':>9}{'workers':>10}{'req/s':>8}{'per replica':>13}"
           f"{'p50 ms':>8}{'p99 ms':>8}{'not 200':>9}{'CPU ms/req':>12}{'host peak/cap':>15}"]
    for r in rows:
        workers = "+".join(str(n) for n in shares(o.concurrency, r.replicas) if n)
        out.append(f"{r.mode:<7}{r.replicas:>9}{workers:>10}{r.throughput:>8.0f}"
                   f"{r.throughput / r.replicas:>13.0f}{r.percentile(0.5) * MS:>8.1f}"
                   f"{r.percentile(0.99) * MS:>8.1f}{r.not_ok:>9}"
                   f"{r.cpu_per_request_s * MS:>12.2f}{f'{r.peak(FAST)}/{cap}':>15}")
    out.append("CPU ms/req: the replicas' CPU time over the requests they answered; hey's "
               "latencies are to 0.1 ms")
    return out


def _cpu(rows: Sequence[Row]) -> list[str]:
    out = [f"where the CPU went, in cores busy ({os.cpu_count()} in all; 'other' is the rest "
           "of the machine's busy time, such as other people's processes):"]
    for r in rows:
        def cores(name: str, row: Row = r) -> float:
            return row.median(lambda s: s.cpu.cores(getattr(s.cpu, name)))
        out.append(f"  {r.mode} x{r.replicas}: replicas {cores('replicas_s'):.2f}, hey "
                   f"{cores('hey_s'):.2f}, fake hosts {cores('hosts_s'):.2f}, Redis "
                   f"{cores('redis_s'):.2f}, PostgreSQL {cores('postgres_s'):.2f}, other "
                   f"{cores('other_s'):.2f}; the machine {cores('busy_s'):.2f}")
    return out


def script_commands() -> frozenset[str]:
    """Commands the fleet's Lua scripts run inside Redis: commandstats counts them too, but
    they cost no round trip."""
    from proxy.state import scripts

    texts = [v for v in vars(scripts).values() if isinstance(v, str)]
    return frozenset(name.lower() for text in texts
                     for name in re.findall(r"redis\.call\('(\w+)'", text))


def _fleet_samples(rows: Sequence[Row]) -> list[Sample]:
    return [s for r in rows if r.mode == "fleet" for s in r.samples]


def path_round_trips(rows: Sequence[Row]) -> tuple[float, float]:
    """EVALSHA calls per request in the fleet runs (the scripts a request waits on: admission
    and its host slot) and Redis's own microseconds per EVALSHA."""
    samples = _fleet_samples(rows)
    calls = sum(s.redis.calls.get("evalsha", 0) for s in samples)
    usec = sum(s.redis.usec.get("evalsha", 0) for s in samples)
    answered = sum(s.load.answered for s in samples)
    return calls / max(1, answered), usec / max(1, calls)


def _redis(rows: Sequence[Row]) -> list[str]:
    samples = _fleet_samples(rows)
    answered = max(1, sum(s.load.answered for s in samples))
    totals: Counter[str] = Counter()
    for s in samples:
        totals.update(s.redis.calls)
    inside = script_commands()
    sent = {k: n for k, n in totals.most_common() if k not in inside and k != "info"}
    in_scripts = sum(n for k, n in totals.items() if k in inside)
    per_request, usec = path_round_trips(rows)
    quiet = [s for r in rows if r.mode == "single" for s in r.samples]
    others = sum(n for s in quiet for k, n in s.redis.calls.items() if k != "info")
    quiet_s = sum(s.cpu.wall_s for s in quiet)
    return [
        f"Redis in the fleet runs, per request ({answered} requests; INFO commandstats before "
        f"and after each run): "
        + ", ".join(f"{k.upper()} {n / answered:.3f}" for k, n in sent.items())
        + f"; commands run inside the Lua scripts {in_scripts / answered:.1f} (no round trips)",
        f"round trips a request waits on: {per_request:.2f} (EVALSHA: the admission script, "
        f"proxy/state/shared_limits.py, which also takes the first host's slot; the host-slot "
        f"script of shared_slots.py when it could not), {usec:.0f} us of each inside Redis; "
        "off the request path: PUBLISH of route health every 50 ms, EVAL lease renewals; "
        "releases ride on the next admission script, or after 5 ms without one go as ZREMs "
        "pipelined by the lease loop (counted with the scripts' commands)",
        f"others on this Redis while the single-process rows ran (nothing of the benchmark's "
        f"then): {others} commands, {others / max(quiet_s, 1e-9):.0f}/s; the same noise is in "
        "the fleet figures, not subtracted"]


def added_p50_s(m: Measured) -> float:
    return statistics.median(p.added_s for p in m.parts.pairs)


def _latency(m: Measured) -> list[str]:
    single = statistics.median(p.single.percentile(0.5) for p in m.parts.pairs)
    fleet = statistics.median(p.fleet.percentile(0.5) for p in m.parts.pairs)
    added = added_p50_s(m)
    trips, usec = path_round_trips(m.parts.rows)
    return [
        f"added latency at 1 concurrent ({LATENCY_PAIRS} pairs of {m.options.latency_requests} "
        f"requests to each of single and fleet x1, interleaved one by one): single "
        f"p50 {single * MS:.2f} ms, fleet p50 {fleet * MS:.2f} ms; fleet less single per pair "
        + ", ".join(f"{p.added_s * MS:+.2f}" for p in m.parts.pairs)
        + f" ms; median {added * MS:+.2f} ms",
        f"that is {added / max(trips, 1e-9) * MS:.2f} ms per round trip a request waits on "
        f"({trips:.2f} of them; {usec:.0f} us each inside Redis, the rest is the client's "
        "Python and the loopback)"]


def _capped(sample: Sample, caps: dict[str, int], o: Options) -> list[str]:
    allowed = sum(cap for _, cap, _ in CAPPED) / CAPPED_DELAY_S
    answers = ", ".join(f"{status} x{n}" for status, n in sorted(sample.load.statuses.items()))
    peaks = ", ".join(f"{name} {sample.peaks[name]}/{caps[name]}" for name, _, _ in CAPPED)
    return [f"capped: {o.most} fleet replicas, {o.concurrency} workers, model {CAPPED_MODEL} "
            f"on {' then '.join(f'{n} (cap {c})' for n, c, _ in CAPPED)}, "
            f"{CAPPED_DELAY_S * MS:.0f} ms a call: {sample.load.throughput:.0f} req/s answered "
            f"200 of the {allowed:.0f} the caps allow; answers {answers}; p50 "
            f"{sample.load.percentile(0.5) * MS:.0f} ms; peak calls at once / cap: {peaks}"]


def _batches(runs: Sequence[BatchRun], o: Options) -> list[str]:
    caps = "/".join(str(spec.cap) for spec in batch.MARKET)
    out = [f"batch: {o.items} items through the Batch API of replica 0 to `bench batch`'s "
           f"market (caps {caps}, host latencies x{o.time_scale:g}); every replica's job "
           "worker claims items from the shared queue"]
    for run in runs:
        result = run.outcome
        out += [f"{run.mode} x{run.replicas}:", *("  " + line for line in
                                                  batch.host_table(result)),
                f"  {result.succeeded}/{result.items} items; {result.throughput:.1f} items/s "
                f"= {run.share:.1%} of the {result.allowed():.1f} items/s the caps allow (sum "
                f"of cap / mean latency); completed after {result.completed_s:.1f} s; replicas' "
                f"CPU {run.replicas_cpu_s / result.items * MS:.1f} ms per item"]
    return out


def _verdict(met: bool) -> str:
    return "MET   " if met else "MISSED"


def _row(rows: Sequence[Row], mode: str, count: int) -> Row | None:
    return next((r for r in rows if r.mode == mode and r.replicas == count), None)


def peaks(m: Measured) -> list[tuple[str, int, int]]:
    """(where, peak, cap) for every host in every run."""
    found = [(f"{FAST} in {r.mode} x{r.replicas}", r.peak(FAST), m.caps[FAST])
             for r in m.parts.rows]
    found += [(f"{name} in the capped run", m.parts.capped.peaks[name], m.caps[name])
              for name, _, _ in CAPPED]
    found += [(f"{h.spec.name} in the {run.mode} batch", h.peak, h.spec.cap)
              for run in m.batches for h in run.hosts]
    return found


def two_over_one_ceiling(one: Row, cores: int) -> tuple[float, float, float]:
    """The most 2 replicas can serve over one on this machine, from where one replica's run
    spent CPU: (ratio, a replica's ms per request, everything else's ms per request). One
    replica is one event loop, bound by its core (1 / replica); two are bound by the machine
    (cores / (replica + the rest)), since the load generator, the fake hosts, Redis and
    PostgreSQL share the same cores."""
    def per_request(figure: str) -> float:
        return one.median(lambda s: getattr(s.cpu, figure) / max(1, s.load.answered))
    replica = per_request("replicas_s")
    rest = max(0.0, per_request("busy_s") - replica)
    if replica <= 0:
        return 0.0, 0.0, rest
    return min(2.0, cores * replica / (replica + rest)), replica, rest


def _ceiling(one: Row, cores: int) -> str:
    ratio, replica, rest = two_over_one_ceiling(one, cores)
    if not ratio:
        return ""
    return (f"; the most this machine allows is {ratio:.2f}x, since a request costs "
            f"{replica * MS:.2f} ms of its replica's core and {rest * MS:.2f} ms of the "
            f"others' (hey, fake hosts, Redis, PostgreSQL) on the same {cores} cores")


def targets(m: Measured) -> list[str]:
    added = added_p50_s(m)
    lines = [f"{_verdict(added <= MAX_ADDED_P50_S)} Redis adds {added * MS:.2f} ms p50 per "
             f"request (fleet x1 less single at 1 concurrent) <= {MAX_ADDED_P50_S * MS:g} ms"]
    over = [f"{where} {peak}/{cap}" for where, peak, cap in peaks(m) if peak > cap]
    most = ", ".join(f"{where} {peak}/{cap}" for where, peak, cap in peaks(m))
    lines.append(f"{_verdict(not over)} each host's peak <= its cap in every run"
                 + (f"; over: {', '.join(over)}" if over else f" ({most})"))
    one, two = _row(m.parts.rows, "fleet", 1), _row(m.parts.rows, "fleet", 2)
    if one and two:
        ratio = two.throughput / one.throughput
        lines.append(f"{_verdict(ratio >= MIN_TWO_OVER_ONE)} 2 replicas serve {ratio:.2f}x the "
                     f"requests/s of one ({two.throughput:.0f} vs {one.throughput:.0f}) >= "
                     f"{MIN_TWO_OVER_ONE:g}x, on {os.cpu_count()} cores"
                     + _ceiling(one, os.cpu_count() or 1))
    single = _row(m.parts.rows, "single", 1)
    if one and single:
        share = one.throughput / single.throughput
        others = ", ".join(f"x{r.replicas} {r.throughput / r.replicas / single.throughput:.0%}"
                           for r in m.parts.rows if r.mode == "fleet" and r.replicas > 1)
        lines.append(f"{_verdict(share >= 1 - MAX_PER_REPLICA_LOSS)} fleet requests/s per "
                     f"replica {share:.0%} of single-process mode ({one.throughput:.0f} vs "
                     f"{single.throughput:.0f}, one replica each) >= "
                     f"{1 - MAX_PER_REPLICA_LOSS:.0%}"
                     + (f" (per replica with more replicas on the same cores: {others})"
                        if others else ""))
    for run in m.batches:
        if run.mode == "fleet":
            alone = next((b for b in m.batches if b.mode == "single"), None)
            lines.append(f"{_verdict(run.share >= batch.TARGET_SHARE)} the {run.replicas}-replica "
                         f"batch reaches {run.share:.1%} of what the caps allow >= "
                         f"{batch.TARGET_SHARE:.0%}"
                         + (f" (one process: {alone.share:.1%})" if alone else ""))
    return lines
