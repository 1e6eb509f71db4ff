"""proxy.billing.limits on an injected clock: per-minute windows, concurrency, and memory that
does not grow with the request rate."""

from __future__ import annotations

import pytest

from proxy.billing.keys import KeyLimits, KeyRecord
from proxy.billing.limits import Limited, Limits


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def key(**limits: int) -> KeyRecord:
    return KeyRecord("key_1", "k", "t", "sy-…abcd", 0, limits=KeyLimits(**limits))


def test_rpm_refuses_the_next_request_until_the_minute_passes() -> None:
    clock = Clock()
    limits = Limits(clock)
    record = key(rpm=3)
    for remaining in ("2", "1", "0"):
        headers = limits.admit(record, 1)
        limits.done(record)
        assert headers["x-ratelimit-remaining-requests"] == remaining
    with pytest.raises(Limited):
        limits.admit(record, 1)
    clock.now += 60.0
    assert limits.admit(record, 1)["x-ratelimit-remaining-requests"] == "2"


def test_ipm_counts_images() -> None:
    limits = Limits(Clock())
    record = key(ipm=4)
    limits.admit(record, 3)
    with pytest.raises(Limited):
        limits.admit(record, 2)


def test_a_key_without_limits_keeps_no_window() -> None:
    """A minute of events for a key with no rpm or ipm was kept and never read: memory grew
    with the request rate (60,000 entries at 1000 requests a second)."""
    limits = Limits(Clock())
    record = key()
    for _ in range(1000):
        assert limits.admit(record, 2) == {}
        limits.done(record)
    state = limits._keys[record.id]
    assert not state.requests.events and not state.images.events
    assert state.in_flight == 0
