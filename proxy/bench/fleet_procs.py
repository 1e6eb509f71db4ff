"""The fleet benchmark's surroundings: a PostgreSQL database and a Redis key prefix of its own,
`switchyard serve` replicas on them (fleet mode, or single-process mode without Redis), and
Redis's own counters, read before and after a run."""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib
import secrets
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit

import httpx

from proxy.bench import procs
from proxy.bench.procs import BenchError

DATABASE_URL = "postgresql://127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"


@contextlib.contextmanager
def own_database(admin_url: str, prefix: str) -> Iterator[str]:
    """The URL of a fresh PostgreSQL database on `admin_url`'s server: created now, dropped
    afterwards with whatever connections are still open to it."""
    psycopg = _extra("psycopg", "postgres")

    name = f"{prefix}_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f"CREATE DATABASE {name}")
    except psycopg.OperationalError as exc:
        raise BenchError(f"PostgreSQL at {_where(admin_url)} would not make a database: "
                         f"{exc.__class__.__name__}") from None
    try:
        yield urlsplit(admin_url)._replace(path="/" + name).geturl()
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextlib.contextmanager
def own_prefix(redis_url: str) -> Iterator[str]:
    """A Redis key prefix of the benchmark's own; its keys are deleted afterwards."""
    redis = _extra("redis", "fleet")

    client = redis.Redis.from_url(redis_url, socket_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise BenchError(f"Redis at {_where(redis_url)} does not answer: "
                         f"{exc.__class__.__name__}") from None
    prefix = "switchyard-bench-fleet-" + secrets.token_hex(4)
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()


def _extra(module: str, extra: str) -> ModuleType:
    """An optional dependency the benchmark needs, or BenchError naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise BenchError(f"bench fleet needs {module}: pip install 'switchyard[{extra}]'") \
            from None


def say(text: str) -> None:
    """Progress on stderr; the report goes to stdout."""
    print(f"bench fleet: {text}", file=sys.stderr, flush=True)


def _where(url: str) -> str:
    """Host and port only: a URL may carry a password."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


@dataclass(frozen=True, slots=True)
class RedisCounters:
    """INFO commandstats (calls and microseconds by command) and the server's CPU seconds.
    The server may be shared: only the difference over a run means anything."""

    calls: Mapping[str, int]
    usec: Mapping[str, int]
    cpu_s: float

    def since(self, before: RedisCounters) -> RedisCounters:
        return RedisCounters(
            {k: n - before.calls.get(k, 0) for k, n in self.calls.items()
             if n - before.calls.get(k, 0) > 0},
            {k: n - before.usec.get(k, 0) for k, n in self.usec.items()},
            self.cpu_s - before.cpu_s)


def redis_counters(redis_url: str) -> RedisCounters:
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=3)
    try:
        stats, cpu = client.info("commandstats"), client.info("cpu")
    finally:
        client.close()
    calls, usec = {}, {}
    for name, figures in stats.items():
        command = name.removeprefix("cmdstat_")
        calls[command], usec[command] = int(figures["calls"]), int(figures["usec"])
    return RedisCounters(calls, usec, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]))


@dataclass(frozen=True, slots=True)
class Setting:
    """Where replicas keep their state: the database, and Redis (fleet mode) or none."""

    database_url: str
    redis_url: str | None = None
    redis_prefix: str = ""

    def environment(self) -> dict[str, str]:
        env = {"SWITCHYARD_DATABASE_URL": self.database_url}
        if self.redis_url is not None:
            env |= {"SWITCHYARD_REDIS_URL": self.redis_url,
                    "SWITCHYARD_REDIS_PREFIX": self.redis_prefix}
        return env

    @property
    def mode(self) -> dict[str, str]:
        """What each replica's /readyz must say."""
        return {"mode": "fleet", "redis": "shared"} if self.redis_url else {"mode": "single"}


@contextlib.contextmanager
def replicas(routes_dir: Path, root: Path, count: int, setting: Setting, name: str,
             env: Mapping[str, str] | None = None) -> Iterator[list[procs.Server]]:
    """`count` serve processes on the catalog and the setting (and `env`), started together
    (each with a data directory of its own under `root`), until the block ends."""
    dirs = [root / f"{name}-{i}" for i in range(count)]
    for data_dir in dirs:
        data_dir.mkdir(parents=True)
    settings = {**setting.environment(), **(env or {})}
    with contextlib.ExitStack() as stack, concurrent.futures.ThreadPoolExecutor(count) as pool:
        started = list(pool.map(lambda d: stack.enter_context(procs.switchyard(
            routes_dir, d, settings=settings)), dirs))
        check_mode(started, setting)
        yield started


def check_mode(servers: list[procs.Server], setting: Setting) -> None:
    """Each replica is in the mode the run claims (a fleet replica on its own state because
    Redis is away would measure the wrong thing)."""
    for server in servers:
        said = httpx.get(f"{server.base_url}/readyz", timeout=5).json().get("fleet")
        if said != setting.mode:
            raise BenchError(f"{server.base_url} is in mode {said}, not {setting.mode}")


def fallbacks(servers: list[procs.Server]) -> int:
    """Times the replicas turned to their own state because Redis did not answer within
    its timeout (switchyard_fleet_fallbacks_total): a stretch of a fleet run that was not."""
    total = 0.0
    for server in servers:
        text = httpx.get(f"{server.base_url}/metrics", timeout=5).text
        total += sum(float(line.split()[-1]) for line in text.splitlines()
                     if line.startswith("switchyard_fleet_fallbacks_total"))
    return round(total)
