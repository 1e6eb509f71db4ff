"""Where a run's CPU went on this machine, read from /proc: the replicas, the load generator,
the fake hosts (this process), Redis, PostgreSQL, and whatever else was busy, so a reader sees
which of them bounded the figures (on two cores, the Python servers do)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from proxy.bench.procs import cpu_seconds


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent on anything but idling, all cores."""
    with open("/proc/stat") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def command_seconds(command: str) -> float:
    """CPU seconds of every live process named `command`, and of the children they reaped:
    a PostgreSQL backend that ended still counts, in its postmaster's."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (proc / "comm").read_text().strip() == command:
                total += cpu_seconds(int(proc.name), reaped=True)
    return total


@dataclass(frozen=True, slots=True)
class Snapshot:
    at: float
    busy_s: float
    replicas_s: float
    own_s: float  # this process: the fake hosts' threads
    postgres_s: float


def snapshot(pids: Sequence[int]) -> Snapshot:
    return Snapshot(time.monotonic(), busy_seconds(), sum(cpu_seconds(p) for p in pids),
                    time.process_time(), command_seconds("postgres"))


@dataclass(frozen=True, slots=True)
class CpuSplit:
    """CPU seconds over a run's wall time, by who spent them."""

    wall_s: float
    replicas_s: float
    hey_s: float
    hosts_s: float
    redis_s: float
    postgres_s: float
    busy_s: float  # the machine, all of it

    @property
    def other_s(self) -> float:
        named = self.replicas_s + self.hey_s + self.hosts_s + self.redis_s + self.postgres_s
        return max(0.0, self.busy_s - named)

    def cores(self, seconds: float) -> float:
        return seconds / self.wall_s if self.wall_s > 0 else 0.0


def split(before: Snapshot, after: Snapshot, hey_s: float, redis_s: float) -> CpuSplit:
    return CpuSplit(after.at - before.at, after.replicas_s - before.replicas_s, hey_s,
                    after.own_s - before.own_s, redis_s, after.postgres_s - before.postgres_s,
                    after.busy_s - before.busy_s)
