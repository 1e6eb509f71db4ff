"""How a router run handled a backend outage, read from the calls the market logged.

Ordinary traffic is a call that arrived while the router's breaker for the backend was closed;
with the breaker open, the only calls are half-open probes. So "avoided" is the moment the
last ordinary call of the outage failed (the breaker opened), and "back" is measured from the
backend's recovery to its first delivery, and to the first moment from which it served most
of the requests arriving in the next WINDOW_S seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice

from proxy.bench.market import Call
from proxy.bench.runner import RouterRun
from proxy.bench.scenario import Event

# The window over which "serving the majority of the traffic" is judged.
WINDOW_S = 10.0


@dataclass(frozen=True, slots=True)
class Outage:
    backend: str
    event: Event
    failed_ordinary: int  # ordinary calls started during the outage (all of them failed)
    avoided_after_s: float  # outage start to the last of them ending; 0 if there were none
    probes: tuple[Call, ...]  # half-open probes during the outage
    first_success_s: float | None  # recovery to the end of its first delivery
    majority_s: float | None  # recovery to when it served most of the traffic again


def analyse(run: RouterRun, backend: str, event: Event) -> Outage:
    during = [c for c in run.calls
              if c.backend == backend and event.start_s <= c.started < event.end_s]
    ordinary = [c for c in during if c.breaker == "closed"]
    avoided = max((c.ended for c in ordinary), default=event.start_s) - event.start_s
    successes = [c.ended for c in run.calls
                 if c.backend == backend and c.started >= event.end_s and c.ok]
    first = min(successes) - event.end_s if successes else None
    return Outage(backend, event, len(ordinary), avoided,
                  tuple(c for c in during if c.breaker != "closed"), first,
                  _majority_after(run, backend, event.end_s))


def _majority_after(run: RouterRun, backend: str, since: float) -> float | None:
    """Seconds from `since` to the first arrival from which `backend` served most of the
    requests arriving within WINDOW_S; None if that never happened."""
    later = [d for d in run.deliveries if d.arrival >= since]
    for i, first in enumerate(later):
        served = total = 0
        for d in islice(later, i, None):
            if d.arrival >= first.arrival + WINDOW_S:
                break
            total += 1
            served += d.served_by == backend
        if 2 * served > total:
            return first.arrival - since
    return None
