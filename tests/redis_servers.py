"""Redis for tests: the machine's server (as .ci/run starts it) under a key prefix of each
test's own, and private `redis-server` processes a test may stop, freeze and restart.

Without a reachable Redis (or the redis-server binary) these tests skip with the reason,
except in CI (CI=true), where they must run.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.serving import free_port

REDIS_URL = os.environ.get("SWITCHYARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"CI=true and {reason}")
    pytest.skip(f"{reason}; start redis-server (as .ci/run does) or set "
                f"SWITCHYARD_TEST_REDIS_URL to run these")


def _ping(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own on the machine's Redis; its keys are deleted after."""
    import redis

    if not _ping(REDIS_URL):
        _unavailable(f"Redis is not reachable at {REDIS_URL}")
    prefix = "sy-test-" + secrets.token_hex(6)
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()


class PrivateRedis:
    """A redis-server of the test's own on a free port: stop it, freeze it, start it again
    (empty, as a restart without persistence leaves it)."""

    def __init__(self, *options: str) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.options = options  # more of redis-server's options
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", *self.options],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not _ping(self.url):
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(5)

    def freeze(self) -> None:
        """It keeps its connections but answers nothing: a Redis slower than any timeout."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        _unavailable("redis-server is not installed")
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.kill()
