"""proxy/state/wire.py, the request path's pipelined Redis connection, against real Redis:
replies stay matched to their calls under concurrency, after a call timed out, and across a
Redis restart; scripts load themselves on NOSCRIPT; db and password in the URL are honoured."""

from __future__ import annotations

import asyncio
import secrets

import pytest
import redis
import uvloop

from proxy.state.wire import ReplyError, Wire, encode, parse
from tests.redis_servers import REDIS_URL, PrivateRedis, private_redis, redis_prefix

__all__ = ["private_redis", "redis_prefix"]  # fixtures


def test_replies_parse_whole_or_not_at_all() -> None:
    reply = b"*3\r\n:1\r\n$3\r\nabc\r\n*2\r\n+OK\r\n$-1\r\n"
    for cut in range(len(reply)):  # a reply that came in pieces is not read before its end
        assert parse(bytearray(reply[:cut]), 0) is None
    assert parse(bytearray(reply), 0) == ([1, b"abc", ["OK", None]], len(reply))
    error, _ = parse(bytearray(b"-NOSCRIPT No matching script\r\n"), 0) or (None, 0)
    assert isinstance(error, ReplyError) and str(error).startswith("NOSCRIPT")
    assert encode(("SET", "k", 5, b"\x00")) == \
        b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n5\r\n$1\r\n\x00\r\n"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])  # serve runs on uvloop
def test_concurrent_calls_each_get_their_own_reply(redis_prefix: str, loop: str) -> None:
    async def go() -> list[object]:
        wire = Wire(REDIS_URL, 1.0)
        try:
            return await asyncio.gather(*(wire.call("ECHO", f"m{i}") for i in range(500)))
        finally:
            await wire.aclose()
    run = uvloop.run if loop == "uvloop" else asyncio.run
    assert run(go()) == [f"m{i}".encode() for i in range(500)]


def test_a_script_loads_itself_and_errors_are_raised(redis_prefix: str) -> None:
    script = f"return {{tonumber(ARGV[1]) + 1, KEYS[1]}} -- {secrets.token_hex(4)}"

    async def go() -> None:
        wire = Wire(REDIS_URL, 1.0)
        try:
            assert await wire.evalsha(script, [f"{redis_prefix}:k"], [41]) == \
                [42, f"{redis_prefix}:k".encode()]
            assert await wire.evalsha(script, ["x"], [1]) == [2, b"x"]  # by digest now
            with pytest.raises(ReplyError, match="ERR"):
                await wire.evalsha("return redis.call('NOSUCHCOMMAND')", [], [])
            assert await wire.call("ECHO", "still in step") == b"still in step"
        finally:
            await wire.aclose()
    asyncio.run(go())


def test_a_late_reply_is_dropped_and_a_restart_is_survived(private_redis: PrivateRedis) -> None:
    async def go() -> None:
        wire = Wire(private_redis.url, 0.2)
        try:
            assert await wire.call("PING") == "PONG"
            private_redis.freeze()
            with pytest.raises(TimeoutError):
                await wire.call("ECHO", "late")
            private_redis.thaw()
            assert await wire.call("ECHO", "on time") == b"on time"
            private_redis.kill()
            with pytest.raises((ConnectionError, TimeoutError, OSError)):
                await wire.call("PING")
            private_redis.start()
            assert await wire.call("PING") == "PONG"
        finally:
            await wire.aclose()
    asyncio.run(go())


def test_the_url_s_db_is_used(redis_prefix: str) -> None:
    key = f"{redis_prefix}:db3"
    url = REDIS_URL.rsplit("/", 1)[0] + "/3"

    async def go() -> None:
        wire = Wire(url, 1.0)
        try:
            assert await wire.call("SET", key, "x", "PX", 5000) == "OK"
        finally:
            await wire.aclose()
    asyncio.run(go())
    assert redis.Redis.from_url(url).get(key) == b"x"
    assert redis.Redis.from_url(REDIS_URL).get(key) is None


def test_a_password_is_sent(private_redis: PrivateRedis) -> None:
    admin = redis.Redis.from_url(private_redis.url)
    admin.config_set("requirepass", "s3cret")

    async def go(url: str) -> object:
        wire = Wire(url, 1.0)
        try:
            return await wire.call("PING")
        finally:
            await wire.aclose()
    with pytest.raises(ReplyError, match="NOAUTH"):
        asyncio.run(go(private_redis.url))
    assert asyncio.run(go(private_redis.url.replace("redis://", "redis://:s3cret@"))) == "PONG"
    assert asyncio.run(go(private_redis.url + "?password=s3cret")) == "PONG"  # as redis-py reads


def test_callers_share_one_connect_and_give_up_together(private_redis: PrivateRedis) -> None:
    """A Redis that takes connections but answers nothing (frozen; AUTH never answered):
    twenty callers each fail at their own timeout, together, not one after another."""
    redis.Redis.from_url(private_redis.url).config_set("requirepass", "s3cret")
    private_redis.freeze()

    async def go() -> float:
        wire = Wire(private_redis.url.replace("redis://", "redis://:s3cret@"), 0.2)
        started = asyncio.get_running_loop().time()
        try:
            results = await asyncio.gather(*(wire.call("PING") for _ in range(20)),
                                           return_exceptions=True)
        finally:
            await wire.aclose()
        assert all(isinstance(r, TimeoutError) for r in results), results
        return asyncio.get_running_loop().time() - started
    took = asyncio.run(go())
    private_redis.thaw()
    assert took < 1.0, f"20 callers took {took:.2f} s"
