"""Route health for the whole fleet: every replica's outcomes count on every replica.

Each replica still decides each request from its own in-memory health (proxy/routing/health.py),
so the request path makes no Redis call for it. What it learns it publishes, a batch every
FLUSH_S on one pub/sub channel, and it applies what the others publish as if it had seen it:
the same failures open the same breakers everywhere, a Retry-After rests the host fleet-wide,
latency and success samples are the fleet's, and a probe that finds a host recovered closes
its breaker on every replica. While Redis is away each replica goes on with its own evidence.

A message reaches only the replicas listening when it is sent, so what keeps a host out of
traffic is also kept in Redis: each breaker open and each rest, until it ends (the later end
wins). A replica that starts (a rolling deploy, autoscaling), or listens again after Redis
was away, reads them first: it does not send a host the fleet found broken its own five
failures, nor call one that asked the fleet to wait.

An attempt that ended elsewhere also freed a slot of its host there: requests waiting here for
one of that host's slots try again at once, instead of at their next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import orjson

from proxy import supervise
from proxy.routing.health import Health, Outcome
from proxy.state.link import CHECK_S, Link

if TYPE_CHECKING:
    from redis.asyncio.client import PubSub

log = logging.getLogger("switchyard.fleet")

FLUSH_S = 0.05  # outcomes gathered this long go out in one PUBLISH
LISTEN_S = 1.0  # a read of the channel waits at most this for a message


class HealthFeed:
    def __init__(self, link: Link, health: Health,
                 freed: Callable[[str], None] | None = None) -> None:
        self._link = link
        self._health = health
        self._freed = freed  # hears the provider of each attempt that ended elsewhere
        self._channel = f"{link.prefix}:health"
        # The routes held out (breaker open, resting): one hash slot, as scripts need
        self._held = [f"{link.prefix}:{{health}}:open", f"{link.prefix}:{{health}}:rest"]
        self._replica = secrets.token_hex(6)
        self._pending: list[Outcome] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.received = 0  # outcomes applied from other replicas
        health.listen(self._heard)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._publishing()),
                       asyncio.create_task(self._listening())]

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _heard(self, outcome: Outcome) -> None:
        self._pending.append(outcome)
        self._wake.set()

    async def _publishing(self) -> None:
        failures = supervise.Failures("fleet_health_publish")
        while True:
            await self._wake.wait()
            await asyncio.sleep(FLUSH_S)
            self._wake.clear()
            batch, self._pending = self._pending, []
            if not self._link.shared:
                continue  # each replica on its own evidence until Redis answers again
            await self._guarded(failures, self._publish(batch))

    async def _publish(self, batch: list[Outcome]) -> None:
        await self._link.client.publish(self._channel, encode(self._replica, batch))
        held: list[str | int] = []
        for route_id in dict.fromkeys(outcome.route_id for outcome in batch):
            route = self._health.known(route_id)
            if route is None:
                continue
            open_s, rest_s = route.held_out()
            for kind, left_s in (("o", open_s), ("r", rest_s)):
                if left_s > 0:
                    held += [kind, route_id, math.ceil(left_s * 1000)]
        if held:
            await self._link.hold(self._held, held)

    async def _catch_up(self) -> None:
        """The breakers open and the rests the fleet holds now, for the time they have left
        (outcomes published before this replica listened never reached it)."""
        reply = await self._link.held(self._held)
        for route_id, open_s, rest_s in held_out(reply):
            route = self._health.known(route_id)
            if route is not None:
                route.hold_out(open_s, rest_s)

    async def _listening(self) -> None:
        """Subscribe and apply; after a lost connection (Redis restarted), subscribe again
        once the link answers."""
        failures = supervise.Failures("fleet_health_listen")
        while True:
            if not self._link.shared:
                await asyncio.sleep(CHECK_S)
                continue
            pubsub = self._link.client.pubsub(ignore_subscribe_messages=True)
            try:
                await self._guarded(failures, self._apply_until_lost(pubsub))
            finally:
                with contextlib.suppress(*self._link.errors):
                    await pubsub.aclose()

    async def _guarded(self, failures: supervise.Failures, work: Awaitable[object]) -> None:
        """Redis failing turns the link down (one log line); anything else is logged and
        counted as the loop's failure, and the loop pauses."""
        try:
            await work
        except self._link.errors as exc:
            self._link.lost(exc)
        except Exception as exc:
            await asyncio.sleep(failures.failed(exc))
        else:
            failures.succeeded()

    async def _apply_until_lost(self, pubsub: PubSub) -> None:
        await pubsub.subscribe(self._channel)
        await self._catch_up()  # after subscribing: nothing falls between the two
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True,
                                               timeout=LISTEN_S)
            if message is None or message.get("type") != "message":
                continue
            sender, outcomes = decode(message["data"])
            if sender in ("", self._replica):
                continue
            for outcome in outcomes:
                provider = self._health.observe(outcome)
                if provider is not None and self._freed is not None:
                    self._freed(provider)
            self.received += len(outcomes)


def held_out(reply: object) -> list[tuple[str, float, float]]:
    """scripts.HELD's reply as (route id, open s, rest s) per route; junk is skipped."""
    found: dict[str, list[float]] = {}
    items = reply if isinstance(reply, list) else []
    at = 0
    for which in (0, 1):  # the open set, then the rest set
        if at >= len(items) or not isinstance(items[at], int):
            break
        count, at = items[at], at + 1
        pairs = zip(items[at:at + 2 * count:2], items[at + 1:at + 2 * count:2], strict=False)
        for route_id, left_ms in pairs:
            if isinstance(route_id, bytes) and isinstance(left_ms, int) and left_ms > 0:
                found.setdefault(route_id.decode(errors="replace"), [0.0, 0.0])[which] = \
                    left_ms / 1000
        at += 2 * count
    return [(route_id, open_s, rest_s) for route_id, (open_s, rest_s) in found.items()]


def encode(replica: str, outcomes: list[Outcome]) -> bytes:
    return orjson.dumps({"from": replica, "outcomes": [
        [o.route_id, o.tier, round(o.seconds, 4), o.ok, o.rest_s] for o in outcomes]})


def decode(data: bytes) -> tuple[str, list[Outcome]]:
    """A batch another replica published; a malformed entry is skipped, not applied."""
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        message = None
    if not isinstance(message, dict):
        log.warning("fleet: skipped a malformed health message")
        return "", []
    outcomes = []
    for entry in message.get("outcomes", ()):
        try:
            route_id, tier, seconds, ok, rest = entry
            outcomes.append(Outcome(str(route_id), str(tier), float(seconds),
                                    None if ok is None else bool(ok), float(rest)))
        except (TypeError, ValueError):
            log.warning("fleet: skipped a malformed health outcome")
    return str(message.get("from", "")), outcomes
