"""One route's attempt seconds for one tier: the EWMA strategies rank by, and the p95 that
triggers hedges, bounds probes and answers `route.max_latency_s`.

Both follow fresh evidence as fast as the breaker follows failures. The EWMA weighs its past
by how old it is against how long a call takes: after a quiet spell (a host ranked out of
traffic, then probed) one fresh sample says more than an old average, so a host that was
slow is ranked back after one fast probe, not three. The p95 forgets a slow spell once a run
of successes (as many as it takes to open a breaker) all came in under half the window's
median: the host changed, the window did not.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass

# The EWMA's own weight halves over a few calls' worth of time (Knobs.fresh_s at least).
FRESH_CALLS = 10


@dataclass(frozen=True, slots=True)
class Knobs:
    alpha: float  # weight of the newest sample when the estimate is fresh
    fresh_s: float  # the estimate's own weight decays with this time constant
    window_s: float  # p95 from samples this recent ...
    most: int  # ... and at most this many
    least: int  # below this many samples the p95 is the prior's
    run: int  # successes in a row under half the p95 that end a slow spell


class Latency:
    """Not thread-safe: it lives on the event loop, in a RouteHealth."""

    def __init__(self, prior_s: float, knobs: Knobs) -> None:
        self._prior = prior_s
        self._knobs = knobs
        self.ewma = prior_s
        self._last_at = -math.inf  # when the newest sample came
        self._recent: deque[tuple[float, float]] = deque()  # (when, seconds), oldest first
        # The same seconds kept sorted as samples come and go: every request reads every
        # candidate's p95, which is then an index, not a sort of the window.
        self._ordered: list[float] = []
        self._under = 0  # the newest samples in a row under half the p95 before them

    def add(self, now: float, seconds: float) -> None:
        k = self._knobs
        kept = 1.0 - k.alpha  # the catalog's prior counts as fresh: one call is no reason
        if self._last_at > -math.inf:  # to forget it
            # "Old" is relative to how long a call takes: at a minute a call, a sample a few
            # seconds old is as fresh as they come.
            fresh_s = max(k.fresh_s, FRESH_CALLS * self.ewma)
            kept *= math.exp(-max(0.0, now - self._last_at) / fresh_s)
        self.ewma = kept * self.ewma + (1.0 - kept) * seconds
        self._last_at = now
        if len(self._ordered) >= k.least and seconds < self._median(now) / 2:
            self._under += 1
        else:
            self._under = 0
        self._recent.append((now, seconds))
        bisect.insort(self._ordered, seconds)
        while len(self._recent) > k.most:
            self._drop()
        if self._under >= k.run:  # a slow spell is over: only the run speaks for now
            while len(self._recent) > self._under:
                self._drop()
            self._under = 0

    def p95(self, now: float) -> float:
        return self.quantile(now, 0.95)

    def _median(self, now: float) -> float:
        """Of the samples before this one. Half the median, not of the p95: image latencies
        have long tails, and five calls in a row under half the p95 is ordinary luck."""
        return self.quantile(now, 0.5)

    def quantile(self, now: float, q: float) -> float:
        """The q-quantile of the recent samples (nearest rank)."""
        self._trim(now - self._knobs.window_s)
        ordered = self._ordered
        if len(ordered) < self._knobs.least:
            # Too little evidence: the prior, widened the way image latencies spread.
            return max(1.5 * self._prior, self.ewma * 1.5)
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    def _trim(self, oldest: float) -> None:
        """Forget samples taken before `oldest`."""
        while self._recent and self._recent[0][0] < oldest:
            self._drop()

    def _drop(self) -> None:
        _, seconds = self._recent.popleft()
        del self._ordered[bisect.bisect_left(self._ordered, seconds)]
