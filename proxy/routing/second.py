"""When a second attempt starts beside the one in flight (run.py): a hedge past the first
route's 97th percentile, the leader racing a stale probe from the start, or the next route
taking over an attempt that hung. Each needs a next route that can take the request now."""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.routing.attempts import Live
from proxy.routing.evidence import Snapshot
from proxy.routing.strategies import hedge_pays

if TYPE_CHECKING:
    from proxy.routing.run import Run


def stall_s(run: Run, live: Live) -> float:
    return run.router.health.of(live.route).stall_s(run.request.geometry.tier)


def usable_spare(run: Run) -> Snapshot | None:
    """The next route's health, if it can take a request now: one kept last in the plan
    (breaker open, resting, stalled) is a failover's last resort, never a second attempt's."""
    if not run.pending:
        return None
    spare = run.router.health.of(run.pending[0]).snapshot(run.request.geometry.tier)
    return spare if spare.available and not spare.stalled else None


def rescuable(run: Run) -> bool:
    """Whether the next route can take over a hung attempt now: usable, and with a free slot
    here. Ending a slow call for a route that would refuse or wait helps nobody."""
    if usable_spare(run) is None:
        return False
    provider = run.pending[0].provider
    return run.router._slots.in_use(provider) < provider.max_in_flight


def watch_time(run: Run) -> float | None:
    """When the next attempt in flight reaches its stall time (while a route can take over)."""
    if not rescuable(run):
        return None
    due = [live.started + stall_s(run, live) for live in run.running.values()
           if not live.watched and not live.route.provider.deferred]
    return min(due, default=None)


def all_hung(run: Run, now: float) -> bool:
    """Mark the attempts whose stall time came as watched; whether every attempt in flight
    has hung (one that still may answer is not raced again)."""
    for live in run.running.values():
        if live.started + stall_s(run, live) <= now:
            live.watched = True
    tier = run.request.geometry.tier
    return all(live.watched and run.router.health.of(live.route).hung(live.token, tier)
               for live in run.running.values())


def hedge_time(run: Run) -> float | None:
    """When to start a second attempt: at once beside a stale probe (run.race), else past the
    first route's hedge quantile for this tier, if the hedge pays for itself."""
    if not (run.hedge or run.race) or len(run.running) != 1:
        return None
    spare = usable_spare(run)
    if spare is None:
        return None
    (live,) = run.running.values()
    if run.race:
        run.race = False
        return live.started
    if not run.hedge:
        return None
    tier = run.request.geometry.tier
    first = run.router.health.of(live.route)
    if not hedge_pays(run.strategy, run.request, first.snapshot(tier), run.pending[0], spare):
        return None
    return live.started + first.hedge_after_s(tier)
