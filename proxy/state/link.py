"""A replica's connection to the fleet's Redis, and whether its state is shared right now.

Redis that fails a call (down, or slower than TIMEOUT_S) turns this replica to its own
in-process state at once: one log line and the gauge at 0, not one per request, and no
request waits on Redis again until a check every CHECK_S finds it answering. The same loop
renews this replica's leases and sends its releases while Redis answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from proxy import metrics, supervise
from proxy.state import scripts
from proxy.state.leases import Leases
from proxy.state.wire import ReplyError, Wire

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("switchyard.fleet")

TIMEOUT_S = 0.25  # a Redis call slower than this counts as Redis being away
CHECK_S = 1.0  # how often a replica on its own state asks whether Redis is back
CARRY_S = 0.005  # a release waits this long for an admission to carry it before the loop sends it


def open_link(url: str, prefix: str, leases: Leases) -> Link:
    """A replica's link to the Redis at `url`: redis-py for what is off the request path, our
    own pipelined connection (proxy/state/wire.py) for the request path's scripts."""
    return Link(connect(url), prefix, leases, Wire(url, TIMEOUT_S))


def connect(url: str) -> Redis:
    """The client: short timeouts and no retries (a failed call falls back, it never waits)."""
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return Redis.from_url(url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S,
                          retry=Retry(NoBackoff(), 0), health_check_interval=0)


class Link:
    def __init__(self, client: Redis, prefix: str, leases: Leases, wire: Wire) -> None:
        from redis.exceptions import RedisError

        self.client = client
        self.prefix = prefix
        self.leases = leases
        self.errors: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
        self.shared: bool | None = None  # None until the first answer or failure
        self._wire = wire
        self._wake = asyncio.Event()
        self._keeper: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        """Ask Redis once (a replica starts on its own state if it is away), then keep
        leases renewed and watch Redis in the background."""
        await self.check()
        self._keeper = asyncio.create_task(self.keep())

    async def close(self) -> None:
        """Stop the loop, send the releases made (the rest run out), close the client."""
        self._closing = True
        self._wake.set()
        if self._keeper is not None:
            # redis-py can lose a cancel that lands while it connects: the flag ends the loop
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        if self.shared:
            with contextlib.suppress(*self.errors):
                async with asyncio.timeout(TIMEOUT_S * 2):
                    await self.leases.flush(self.client)
        self.shared = False  # a request still ending asks Redis nothing more
        await self.client.aclose()
        await self._wire.aclose()

    async def admit(self, keys: list[str], args: list[str | int]) -> list[int]:
        """The admission script, carrying this replica's releases not yet sent."""
        return await self._carrying(scripts.ADMIT, keys, args)

    async def acquire(self, keys: list[str], args: list[str | int]) -> list[int]:
        """The host-slot script, carrying the releases too: a request woken by a release
        here must find that slot free."""
        return await self._carrying(scripts.ACQUIRE, keys, args)

    async def _carrying(self, script: str, keys: list[str], args: list[str | int]) -> list[int]:
        released = self.leases.take_released()
        try:
            return _integers(await self._call(
                script, keys + [where for where, _, _ in released],
                args + [lease for _, lease, _ in released]))
        except BaseException:
            self.leases.give_back(released)
            raise

    async def count(self, keys: list[str]) -> list[int]:
        return _integers(await self._call(scripts.COUNT, keys, []))

    async def hold(self, keys: list[str], args: list[str | int]) -> None:
        """Routes kept out of traffic, for replicas that listen later (scripts.HOLD)."""
        await self._call(scripts.HOLD, keys, args)

    async def held(self, keys: list[str]) -> object:
        """What `hold` kept that has not ended (scripts.HELD)."""
        return await self._call(scripts.HELD, keys, [])

    async def _call(self, script: str, keys: list[str], args: list[str | int]) -> object:
        try:  # bounded by the wire's timeout: connect, then the reply
            return await self._wire.evalsha(script, keys, args)
        except self.errors as exc:
            self.lost(exc)
            raise

    async def remove(self, where: str, lease: str) -> None:
        """Remove a released lease at once, if Redis answers (else the loop does once it does)."""
        if not self.shared:
            return
        try:
            await self._wire.call("ZREM", where, lease)
        except self.errors as exc:
            self.lost(exc)

    def released(self) -> None:
        """A lease was released: send it soon."""
        self._wake.set()

    def lost(self, exc: BaseException) -> None:
        if self.shared is not False:
            self.shared = False
            metrics.FLEET_SHARED.set(0)
            metrics.FLEET_FALLBACKS.inc()
            log.warning("fleet: Redis is not answering (%s): rate limits and host slots are "
                        "this replica's own until it does", type(exc).__name__)

    def regained(self) -> None:
        if self.shared is not True:
            self.shared = True
            metrics.FLEET_SHARED.set(1)
            log.info("fleet: Redis answers: rate limits and host slots are shared by the fleet")

    async def check(self) -> None:
        """Redis answers on both connections (the request path's own and redis-py's), and
        takes a script's write."""
        try:
            async with asyncio.timeout(TIMEOUT_S * 2):
                await self._wire.evalsha(scripts.PROBE, [f"{self.prefix}:probe"], [])
                await self.client.ping()
        except self.errors as exc:
            self.lost(exc)
        else:
            self.regained()

    async def keep(self) -> None:
        """Until closed: renew leases (every second) and send releases as they come while
        Redis answers; while it does not, ask every CHECK_S whether it is back. Supervised:
        an exception is logged and counted, and the loop goes on."""
        failures = supervise.Failures("fleet_state")
        due = time.monotonic()
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, due - time.monotonic()))
            if self._wake.is_set() and not self._closing:
                await asyncio.sleep(CARRY_S)  # the next admission may carry the releases
            self._wake.clear()
            try:
                due = await self._turn(due)
            except Exception as exc:
                await asyncio.sleep(failures.failed(exc))
            else:
                failures.succeeded()

    async def _turn(self, due: float) -> float:
        """Send releases, and renew (or check) when due; returns when the next turn is due."""
        now = time.monotonic()
        if not self.shared:
            self.leases.forget_expired(now)
            if now < due:
                return due
            await self.check()  # back: renew at once, what still runs counts again
            return now if self.shared else now + CHECK_S
        try:
            async with asyncio.timeout(TIMEOUT_S * 2):
                await self.leases.flush(self.client)
                if now >= due:
                    await self.leases.renew(self.client)
                    return now + self.leases.renew_s
        except self.errors as exc:
            self.lost(exc)
            return now + CHECK_S
        return due


def _integers(reply: object) -> list[int]:
    """A Lua table of integers, as the wire hands it over (anything else is Redis failing)."""
    if not isinstance(reply, list) or not all(isinstance(x, int) for x in reply):
        raise ReplyError(f"unexpected reply from a script ({type(reply).__name__})")
    return [int(x) for x in reply]
