"""Route health for the whole fleet: every replica's outcomes count on every replica.

Each replica still decides each request from its own in-memory health (proxy/routing/health.py),
so the request path makes no Redis call for it. What it learns it publishes, a batch every
FLUSH_S on one pub/sub channel, and it applies what the others publish as if it had seen it:
the same failures open the same breakers everywhere, a Retry-After rests the host fleet-wide,
latency and success samples are the fleet's, and a probe that finds a host recovered closes
its breaker on every replica. While Redis is away each replica goes on with its own evidence.

A message reaches only the replicas listening when it is sent, so what keeps a host out of
traffic is also kept in Redis (proxy/state/held.py), written before the message goes out. A
replica that starts (a rolling deploy, autoscaling), or listens again after Redis was away,
reads it once its subscription is confirmed, and a starting one before it serves: it does not
send a host the fleet found broken its own five failures, nor call one that asked the fleet
to wait.

An attempt that ended elsewhere also freed a slot of its host there: requests waiting here for
one of that host's slots try again at once, instead of at their next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson

from proxy import supervise
from proxy.routing.health import Health, Outcome
from proxy.state.held import Held
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
        self._holding = Held(health)
        self._wake = asyncio.Event()
        self._caught_up = asyncio.Event()  # the first read of what Redis holds was made
        self._tasks: list[asyncio.Task[None]] = []
        self.received = 0  # outcomes applied from other replicas
        health.listen(self._heard)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._publishing()),
                       asyncio.create_task(self._listening())]

    async def caught_up(self, within_s: float) -> None:
        """Return once what the fleet holds out was read (or Redis is away), or after
        `within_s`: a replica that starts serves knowing it."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._caught_up.wait(), within_s)

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
                self._holding.forget()
                continue  # each replica on its own evidence until Redis answers again
            self._holding.review(outcome.route_id for outcome in batch)
            await self._guarded(failures, self._publish(batch, self._holding.take()))

    async def _publish(self, batch: list[Outcome], held: list[str | int]) -> None:
        """What is held out first, then the message: a replica that subscribes in between
        reads the one or hears the other."""
        try:
            if held:
                await self._link.hold(self._held, held)
            if batch:
                await self._link.client.publish(self._channel, encode(self._replica, batch))
        except BaseException:
            self._holding.forget()
            raise

    async def _listening(self) -> None:
        """Subscribe and apply; after a lost connection (Redis restarted), subscribe again
        once the link answers."""
        failures = supervise.Failures("fleet_health_listen")
        while True:
            if not self._link.shared:
                self._caught_up.set()  # nothing to read: the replica starts on its own
                await asyncio.sleep(CHECK_S)
                continue
            pubsub = self._link.client.pubsub()
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
        # Read what Redis holds only once the subscription is confirmed: whatever is written
        # (then published) after that, this replica hears.
        while (message := await pubsub.get_message(timeout=LISTEN_S)) is None or \
                message.get("type") != "subscribe":
            self._apply(message)
        self._holding.restore(await self._link.held(self._held))
        self._caught_up.set()
        if self._holding.again():  # Redis may have come back empty
            self._wake.set()
        while True:
            self._apply(await pubsub.get_message(timeout=LISTEN_S))

    def _apply(self, message: dict[str, Any] | None) -> None:
        """Another replica's outcomes, as if this one had seen them."""
        if message is None or message.get("type") != "message":
            return
        sender, outcomes = decode(message["data"])
        if sender in ("", self._replica):
            return
        for outcome in outcomes:
            provider = self._health.observe(outcome)
            if provider is not None and self._freed is not None:
                self._freed(provider)
        self.received += len(outcomes)
        if self._holding.review(outcome.route_id for outcome in outcomes):
            self._wake.set()  # a breaker they opened here: the publisher writes it


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
