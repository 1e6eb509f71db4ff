"""A run cut into phases: the spans between the market's event boundaries, measured one by one.

A whole-run average hides what the audit cares about (what happens while a host hangs, and
how fast traffic comes back after), so every figure here is per phase. Requests belong to the
phase their arrival falls in, for the router and the oracles alike.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from itertools import pairwise

from proxy.bench.market import Call
from proxy.bench.report import percentile
from proxy.bench.runner import RouterRun
from proxy.bench.scenario import Backend, Delivery, Event

# The events a host recovers from (a 429 storm is a cooldown, not a recovery).
RECOVERIES = ("down", "hang", "slow")
# Short names for the phase labels.
LABELS = {"down": "down", "hang": "hang", "slow": "slow", "rate_limited": "429"}
# Sliding window (seconds of arrivals) over which a recovered host's share is judged.
SHARE_WINDOW_S = 5.0
# A host back to this fraction of its usual share has its traffic back.
SHARE_BACK = 0.8
# Below this usual share a host has no traffic to win back under that strategy.
MIN_USUAL_SHARE = 0.05


@dataclass(frozen=True, slots=True)
class Phase:
    """[start_s, end_s) of the schedule; `troubles` are the events live in it."""

    name: str
    start_s: float
    end_s: float
    troubles: tuple[tuple[str, Event], ...] = ()  # (backend, event)

    @property
    def disturbed(self) -> bool:
        """Some host is slow, hung or down (a 429 storm leaves hosts answering)."""
        return any(event.kind != "rate_limited" for _, event in self.troubles)

    @property
    def length_s(self) -> float:
        return self.end_s - self.start_s

    def holds(self, t: float) -> bool:
        return self.start_s <= t < self.end_s


def split(backends: Sequence[Backend], duration_s: float) -> tuple[Phase, ...]:
    """The schedule cut at every event's start and end. A phase with events is named after
    them ("cheap-hang"); a quiet one after the events that ended at its start ("after-hang"),
    or "calm" when none did."""
    events = [(b.name, e) for b in backends for e in b.events]
    cuts = sorted({0.0, duration_s, *(t for _, e in events for t in (e.start_s, e.end_s)
                                      if 0.0 < t < duration_s)})
    phases = []
    for start, end in pairwise(cuts):
        live = tuple((name, e) for name, e in events if e.start_s <= start < e.end_s)
        ended = [e for _, e in events if e.end_s == start]
        if live:
            name = "+".join(f"{backend}-{LABELS[e.kind]}" for backend, e in live)
        elif ended:
            name = "after-" + "+".join(LABELS[e.kind] for e in ended)
        else:
            name = "calm"
        phases.append(Phase(name, start, end, live))
    return tuple(phases)


def first_calm(phases: Sequence[Phase]) -> Phase:
    """The first phase with no event in it: where a strategy's usual shares are read."""
    return next(p for p in phases if not p.troubles)


@dataclass(frozen=True, slots=True)
class Figures:
    """One contender's requests in one phase."""

    requests: int
    success: float  # share delivered
    cost_per_image: float  # USD billed (lost hedges included) per image delivered; nan if none
    p95_s: float  # arrival to delivery, delivered requests, nearest rank; nan if none


def figures(deliveries: Sequence[Delivery], phase: Phase) -> Figures:
    inside = [d for d in deliveries if phase.holds(d.arrival)]
    delivered = [d for d in inside if d.ok]
    images = sum(d.images for d in delivered)
    cost = sum((d.cost for d in inside), Decimal(0))
    return Figures(len(inside), len(delivered) / len(inside) if inside else math.nan,
                   float(cost) / images if images else math.nan,
                   percentile(sorted(d.latency_s for d in delivered), 0.95))


@dataclass(frozen=True, slots=True)
class Row:
    """A router run in one phase, beside the oracles in the same phase."""

    run: str  # "cheapest", "cheapest+hedge", ...
    phase: Phase
    own: Figures
    cost_oracle: Figures
    latency_oracle: Figures

    @property
    def cost_over(self) -> float:
        """$/image over the cost oracle's, as a fraction (0.05: 5% dearer)."""
        return self.own.cost_per_image / self.cost_oracle.cost_per_image - 1

    @property
    def p95_over(self) -> float:
        """p95 over the latency oracle's p95, as a fraction."""
        return self.own.p95_s / self.latency_oracle.p95_s - 1


def rows(run: RouterRun, phases: Sequence[Phase], cost_oracle: Sequence[Delivery],
         latency_oracle: Sequence[Delivery]) -> list[Row]:
    return [Row(run.name, phase, figures(run.deliveries, phase), figures(cost_oracle, phase),
                figures(latency_oracle, phase)) for phase in phases]


# --- recovery: how soon a host that came back gets its traffic back ------------------------


def share(deliveries: Sequence[Delivery], backend: str, start: float, end: float) -> float:
    """`backend`'s share of the deliveries to requests arriving in [start, end); 0 if none."""
    served = [d.served_by for d in deliveries if d.ok and start <= d.arrival < end]
    return served.count(backend) / len(served) if served else 0.0


def back_after(deliveries: Sequence[Delivery], backend: str, since: float, until: float,
               wanted: float, window_s: float = SHARE_WINDOW_S) -> float | None:
    """Seconds from `since` to the first arrival from which `backend` keeps a share >= wanted
    in every window of `window_s` seconds of arrivals starting up to `until` - window_s
    (windows are cut at `until`, the next event, so a span shorter than a window is judged
    as one); None if it never does."""
    inside = sorted((d for d in deliveries if since <= d.arrival < until),
                    key=lambda d: d.arrival)
    arrivals = [d.arrival for d in inside]
    delivered, mine = [0], [0]  # running counts, so each window is two subtractions
    for d in inside:
        delivered.append(delivered[-1] + d.ok)
        mine.append(mine[-1] + (d.served_by == backend))
    last_start = max(since, until - window_s)
    back: float | None = None
    for i, start in enumerate(arrivals):
        if start > last_start:
            break
        j = bisect.bisect_left(arrivals, min(start + window_s, until))
        total = delivered[j] - delivered[i]
        if total and (mine[j] - mine[i]) / total >= wanted:
            if back is None:
                back = start
        else:
            back = None
    return None if back is None else back - since


@dataclass(frozen=True, slots=True)
class Recovery:
    """One host's return after one event, in one run."""

    run: str
    backend: str
    event: Event
    usual: float  # its share in the first calm phase of this run
    seconds: float | None  # to >= SHARE_BACK x usual; None: never within the next phase

    @property
    def applicable(self) -> bool:
        return self.usual >= MIN_USUAL_SHARE


def recoveries(run: RouterRun, backends: Sequence[Backend],
               phases: Sequence[Phase]) -> list[Recovery]:
    """Every recovery (end of down, hang or slow) of every host, judged up to the end of the
    phase that begins at it."""
    calm = first_calm(phases)
    found = []
    for backend in backends:
        usual = share(run.deliveries, backend.name, calm.start_s, calm.end_s)
        for event in (e for e in backend.events if e.kind in RECOVERIES):
            following = next((p for p in phases if p.start_s == event.end_s), None)
            if following is None:  # the run ended with the event
                continue
            seconds = back_after(run.deliveries, backend.name, event.end_s, following.end_s,
                                 SHARE_BACK * usual) if usual >= MIN_USUAL_SHARE else None
            found.append(Recovery(run.name, backend.name, event, usual, seconds))
    return found


# --- a hung host under hedging: how long ordinary traffic kept going to it ------------------


@dataclass(frozen=True, slots=True)
class HangExit:
    """How long a run kept starting ordinary calls (breaker closed) on a hung host."""

    run: str
    backend: str
    event: Event
    ordinary: int  # ordinary calls started during the hang
    last_s: float | None  # hang start to the last of them starting; None: there were none


def hang_exits(run: RouterRun, backends: Sequence[Backend]) -> list[HangExit]:
    found = []
    for backend in backends:
        for event in (e for e in backend.events if e.kind == "hang"):
            ordinary = [c for c in run.calls if _ordinary_during(c, backend.name, event)]
            last = max((c.started for c in ordinary), default=None)
            found.append(HangExit(run.name, backend.name, event, len(ordinary),
                                  None if last is None else last - event.start_s))
    return found


def _ordinary_during(call: Call, backend: str, event: Event) -> bool:
    return call.backend == backend and call.breaker == "closed" and event.covers(call.started)
