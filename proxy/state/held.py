"""What keeps routes out of the fleet's traffic, kept in Redis for replicas that listen later.

A health message reaches only the replicas listening when it goes out. A replica that starts
(a rolling deploy, autoscaling) or listens again after Redis was away reads here what the fleet
holds now, for the time it has left (scripts.HOLD and HELD, on Redis's clock): each breaker
open, whoever's outcomes opened it (every replica writes what it sees open; the later end
wins), and each rest a host asked for (Retry-After), written by the replica it told. A
refused credential's rest is not kept: a restart with a new key must not inherit it. A breaker
that closes (a probe found the host well) is taken out by every replica that saw it open,
whoever wrote the end Redis holds. After a subscription (Redis back, maybe empty) a replica
writes again everything it holds out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from proxy.routing.health import Health, State

GROWS_S = 0.05  # a period written already is written again only if it now ends this much later


class Held:
    def __init__(self, health: Health) -> None:
        self._health = health
        self._written: dict[tuple[str, str], float] = {}  # (kind, route id) -> end (health's clock)
        self._changes: list[str | int] = []  # HOLD's arguments, not sent yet
        self._opened: set[str] = set()  # routes seen not closed (open, half-open) here

    def review(self, route_ids: Iterable[str]) -> bool:
        """After outcomes about these routes (this replica's or another's): what changed
        goes to `take`. True if anything did."""
        now = self._health.clock()
        before = len(self._changes)
        for route_id in dict.fromkeys(route_ids):
            route = self._health.known(route_id)
            if route is None:
                continue
            open_s, rest_s = route.held_out()
            if route.state is not State.CLOSED:
                self._opened.add(route_id)
            elif route_id in self._opened:  # closed since: Redis may hold anyone's end
                self._opened.discard(route_id)
                self._changes += ["c", route_id, 0]
            for kind, left_s in (("o", open_s), ("r", rest_s)):
                written = self._written.get((kind, route_id))
                if left_s > 0:
                    if written is None or now + left_s > written + GROWS_S:
                        self._changes += [kind, route_id, math.ceil(left_s * 1000)]
                        self._written[(kind, route_id)] = now + left_s
                elif written is not None:
                    del self._written[(kind, route_id)]
        return len(self._changes) > before

    def take(self) -> list[str | int]:
        changes, self._changes = self._changes, []
        return changes

    def forget(self) -> None:
        """What was written may not be there (a write failed, Redis restarted empty): the
        next review writes what it finds again (which routes were seen open stays known)."""
        self._written.clear()
        self._changes.clear()

    def again(self) -> bool:
        """After a subscription: everything held out here, written again (Redis may have
        come back empty). True if there is anything."""
        self.forget()
        return self.review(self._health.route_ids())

    def restore(self, reply: object) -> None:
        """HELD's reply applied to this replica's routes (others are not in its catalog)."""
        for route_id, open_s, rest_s in held_out(reply):
            route = self._health.known(route_id)
            if route is not None:
                route.hold_out(open_s, rest_s)
                if open_s > 0:
                    self._opened.add(route_id)


def held_out(reply: object) -> list[tuple[str, float, float]]:
    """scripts.HELD's reply as (route id, open s, rest s) per route; junk is skipped."""
    found: dict[str, list[float]] = {}
    items = reply if isinstance(reply, list) else []
    at = 0
    for which in (0, 1):  # the open set, then the rest set
        if at >= len(items) or not isinstance(items[at], int) or items[at] < 0:
            break
        count, at = items[at], at + 1
        pairs = zip(items[at:at + 2 * count:2], items[at + 1:at + 2 * count:2], strict=False)
        for route_id, left_ms in pairs:
            if isinstance(route_id, bytes) and isinstance(left_ms, int) and left_ms > 0:
                found.setdefault(route_id.decode(errors="replace"), [0.0, 0.0])[which] = \
                    left_ms / 1000
        at += 2 * count
    return [(route_id, open_s, rest_s) for route_id, (open_s, rest_s) in found.items()]
