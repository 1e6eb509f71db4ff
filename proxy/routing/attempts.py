"""What one request's execution (run.py) is made of: an attempt in flight, how a run fails,
and the failure of an attempt that hung."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.catalog import Route
from proxy.domain import Attempt
from proxy.failures import Failure, Kind
from proxy.routing.slots import Slot

# Retry-After for a client turned away because every route is at its concurrency limit.
SATURATED_RETRY_AFTER_S = 1.0
# How long past the deadline to wait for flows to end themselves before giving up on them.
DEADLINE_GRACE_S = 1.0
# How often a patient request waiting for a slot looks again even if no slot was released.
PATIENT_RECHECK_S = 5.0


class RoutesFailed(Exception):
    """Every route tried failed, or one failed in a way no other route can fix."""

    def __init__(self, failure: Failure, attempts: tuple[Attempt, ...]) -> None:
        super().__init__(failure.message)
        self.failure = failure
        self.attempts = attempts


@dataclass
class Live:
    """An attempt in flight."""

    route: Route
    token: int
    started: float
    deadline: float
    slot: Slot
    watched: bool = False  # its stall time came (and it was raced if it hung)


def hang(live: Live, stall_s: float) -> Failure:
    return Failure(Kind.TIMEOUT, f"no answer in {stall_s:.1f} s while {live.route.provider.name} "
                                 f"delivered nothing: moved to the next route")
