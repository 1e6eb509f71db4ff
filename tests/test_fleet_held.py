"""What keeps routes out of traffic stays right in Redis through what a fleet goes through
(proxy/state/held.py): Redis restarted empty gets back what each replica still holds out, and
a breaker that closes is taken out by the replica that saw it close, whoever wrote the end
Redis holds (the replica that did may be gone: a rolling deploy)."""

from __future__ import annotations

import asyncio

from proxy.failures import Failure, Kind
from proxy.routing.health import State
from tests.redis_servers import PrivateRedis, private_redis, redis_prefix
from tests.test_shared_health import BROKEN, ROUTE, Clock, attempt, kept, replica, until

__all__ = ["private_redis", "redis_prefix"]  # fixtures


def test_a_rest_is_written_again_when_redis_comes_back_empty(
        private_redis: PrivateRedis) -> None:
    async def go() -> None:
        async with replica("fleet", private_redis.url) as a:
            attempt(a, Failure(Kind.RATE_LIMITED, "429", retry_after_s=30))
            await kept("fleet", "rest", url=private_redis.url)
            private_redis.kill()
            await asyncio.sleep(0.3)
            private_redis.start()  # empty
            await kept("fleet", "rest", url=private_redis.url, within_s=8.0)
            async with replica("fleet", private_redis.url) as late:
                assert not late.snapshots([ROUTE], "1K")[ROUTE.id].available
    asyncio.run(go())


def test_a_breaker_closed_is_taken_out_though_its_latest_writer_is_gone(
        redis_prefix: str) -> None:
    """A's probe fails and A writes a later end than B's; A stops. B's probe then finds the
    host well: B takes the entry out, though the end Redis held was A's."""
    async def go() -> None:
        ahead_a, ahead_b = Clock(), Clock()
        async with replica(redis_prefix, clock=ahead_b) as b:
            async with replica(redis_prefix, clock=ahead_a) as a:
                for _ in range(5):
                    attempt(a, BROKEN)
                await until(lambda: b.of(ROUTE).state is State.OPEN)
                await kept(redis_prefix, "open")
                ahead_a.ahead_s = 2.1  # A half-open: its probe fails, open again, longer
                attempt(a, BROKEN)
                await asyncio.sleep(0.3)  # A writes its later end
            ahead_b.ahead_s = 2.1  # A is gone; B half-open: its probe finds the host well
            attempt(b, None)
            assert b.of(ROUTE).state is State.CLOSED
            await kept(redis_prefix, "open", present=False)
            async with replica(redis_prefix) as late:
                assert late.snapshots([ROUTE], "1K")[ROUTE.id].available
    asyncio.run(go())
