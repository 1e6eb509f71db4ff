"""`switchyard bench fleet`: its pure pieces, and a tiny run through the CLI (a second per
part, two fleet sizes) on the machine's PostgreSQL and Redis. Speed is the benchmark's to
judge, never this test's: it checks the report is whole (real numbers where figures go, every
target judged) and that no host went past its cap, which holds at any speed.

Without PostgreSQL, Redis or hey the run skips with the reason, except in CI.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
from collections import Counter

import psycopg
import pytest
import redis

from proxy.bench import fleet, hey
from proxy.bench.fleet_report import script_commands, two_over_one_ceiling
from proxy.bench.machine import CpuSplit
from tests.databases import POSTGRES_URL, _admin
from tests.redis_servers import REDIS_URL, redis_prefix

__all__ = ["redis_prefix"]  # a fixture: it skips without Redis

NUMBER = r"[+-]?\d+(?:\.\d+)?"


def test_hey_rows_become_latencies_statuses_and_wall_time() -> None:
    header = "response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read," \
             "status-code,offset\n"
    result = hey.parse([header + "0.0030,0,0,0,0,0,200,0.0002\n0.0010,0,0,0,0,0,503,0.5000\n",
                        header + "0.0020,0,0,0,0,0,200,0.9000\n"], cpu_s=0.25)
    assert result.latencies_s == (0.001, 0.002, 0.003)
    assert result.statuses == {"200": 2, "503": 1} and result.ok == 2
    assert math.isclose(result.wall_s, 0.902)
    assert math.isclose(result.throughput, 2 / 0.902)
    assert result.percentile(0.5) == 0.002 and result.cpu_s == 0.25


def test_workers_split_evenly_and_none_is_left_idle() -> None:
    assert hey.shares(12, 3) == [4, 4, 4]
    assert hey.shares(13, 3) == [5, 4, 4]
    assert hey.shares(2, 3) == [1, 1, 0]


def _args(**given: object) -> argparse.Namespace:
    defaults: dict[str, object] = {
        "database_url": None, "redis_url": None, "seconds": 4.0, "concurrency": 12,
        "replicas": "1,2,3", "rounds": 3, "latency_requests": 200, "items": 2000,
        "time_scale": 0.1}
    return argparse.Namespace(**{**defaults, **given})


def test_options_come_from_the_arguments_and_bad_ones_are_named() -> None:
    options = fleet.options(_args(replicas="3, 1"))
    assert options.replicas == (1, 3) and options.most == 3
    assert options.database_url == "postgresql://127.0.0.1:5432/test"
    with pytest.raises(ValueError, match="--replicas"):
        fleet.options(_args(replicas="two"))
    with pytest.raises(ValueError, match="--replicas"):
        fleet.options(_args(replicas="0,1"))
    with pytest.raises(ValueError, match="--concurrency 2 leaves a replica"):
        fleet.options(_args(concurrency=2))
    with pytest.raises(ValueError, match="--latency-requests"):
        fleet.options(_args(latency_requests=0))


def test_commands_inside_the_scripts_are_not_counted_as_round_trips() -> None:
    inside = script_commands()
    assert {"zadd", "zcard", "time", "zremrangebyscore", "zrem"} <= inside
    assert not {"evalsha", "eval", "publish"} & inside


def _row(replica_ms: float, rest_ms: float) -> fleet.Row:
    """A fleet x1 row of 1000 requests in a second, with that CPU spent per request."""
    answered = 1000
    cpu = CpuSplit(wall_s=1.0, replicas_s=replica_ms * answered / 1000, hey_s=0, hosts_s=0,
                   redis_s=0, postgres_s=0, busy_s=(replica_ms + rest_ms) * answered / 1000)
    load = hey.Result((0.001,) * answered, Counter({"200": answered}), 1.0, 0.0)
    return fleet.Row("fleet", 1, (fleet.Sample(load, cpu, {}, None),))  # type: ignore[arg-type]


def test_the_two_replica_ceiling_comes_from_where_the_cpu_went() -> None:
    # A replica's own cost against the rest's (hey, hosts, Redis, PostgreSQL) on 2 cores.
    ratio, replica, rest = two_over_one_ceiling(_row(1.66, 1.21), 2)
    assert (round(replica * 1000, 2), round(rest * 1000, 2)) == (1.66, 1.21)
    assert ratio == pytest.approx(2 * 1.66 / 2.87)  # about 1.16x, whatever the code does
    assert two_over_one_ceiling(_row(1.0, 0.0), 2)[0] == 2.0  # nothing else: twice one
    assert two_over_one_ceiling(_row(1.0, 0.0), 4)[0] == 2.0  # never past 2 replicas' worth
    assert two_over_one_ceiling(_row(1.0, 1.0), 2)[0] == pytest.approx(1.0)


@pytest.fixture
def services(redis_prefix: str) -> None:
    _admin().close()  # type: ignore[attr-defined]  # skips (or fails in CI) without PostgreSQL
    if shutil.which("hey") is None:
        reason = "hey (https://github.com/rakyll/hey) is not installed: apt-get install hey"
        if os.environ.get("CI") == "true":
            raise RuntimeError(f"CI=true and {reason} (.ci/run installs it)")
        pytest.skip(reason)


def _figures(pattern: str, report: str) -> list[tuple[str, ...]]:
    found = re.findall(pattern, report, re.M)
    assert found, f"no match for {pattern!r} in:\n{report}"
    return found


def test_a_tiny_fleet_benchmark_reports_every_figure(services: None) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "bench", "fleet", "--seconds", "1", "--rounds", "1",
         "--replicas", "1,2", "--concurrency", "4", "--latency-requests", "20",
         "--items", "40", "--time-scale", "0.01", "--database-url", POSTGRES_URL,
         "--redis-url", REDIS_URL], capture_output=True, text=True, timeout=120)
    report = done.stdout
    assert done.returncode == 0, done.stderr[-3000:]

    rows = _figures(rf"^(single|fleet)\s+(\d)\s+[\d+]+\s+({NUMBER})\s+{NUMBER}\s+({NUMBER})\s+"
                    rf"({NUMBER})\s+(\d+)\s+({NUMBER})\s+(\d+)/(\d+)$", report)
    assert [(mode, count) for mode, count, *_ in rows] == [
        ("single", "1"), ("fleet", "1"), ("fleet", "2")]
    for _, _, rate, p50, p99, _, cpu, peak, cap in rows:
        assert float(rate) > 0 and 0 < float(p50) <= float(p99) and float(cpu) > 0
        assert int(peak) <= int(cap) == 64
    trips = _figures(rf"round trips a request waits on: ({NUMBER}) ", report)
    assert float(trips[0]) >= 1  # at least the admission script
    assert _figures(rf"per pair (?:{NUMBER}, ){{4}}{NUMBER} ms; median ({NUMBER}) ms", report)
    capped = _figures(r"(capped-[ab]) (\d+)/(\d+)", report)
    assert {name for name, *_ in capped} == {"capped-a", "capped-b"}
    assert all(int(peak) <= int(cap) for _, peak, cap in capped)
    assert report.count("40/40 items; ") == 2
    for name, cap, peak in _figures(r"^  (budget|mid|steady|premium)\s+(\d+)\s+(\d+)\s", report):
        assert int(peak) <= int(cap), name
    verdicts = _figures(r"^(MET   |MISSED) ", report)
    assert len(verdicts) == 5
    assert re.search(r"^MET    each host's peak <= its cap in every run", report, re.M)
    _removed(report)


def _removed(report: str) -> None:
    """The benchmark's database is dropped and its Redis keys deleted."""
    database, prefix = _figures(r"database (\S+) and Redis prefix (\S+), both removed",
                                report)[0]
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                            (database,)).fetchone() is None
    client = redis.Redis.from_url(REDIS_URL)
    assert list(client.scan_iter(match=f"{prefix}:*")) == []
    client.close()
