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


def test_a_window_holds_entries_by_time_not_by_request() -> None:
    """A minute of requests at 1000 a second was 60,000 entries per window (memory grew with
    the rate): events within MERGE_S share one, and leave with the last of them."""
    clock = Clock()
    limits = Limits(clock)
    record = key()
    for _ in range(1000):
        assert limits.admit(record, 2) == {}
        limits.done(record)
        clock.now += 0.001
    state = limits._keys[record.id]
    assert len(state.requests.events) <= 11 and state.requests.total == 1000
    assert state.images.total == 2000
    clock.now += 60.0
    state.requests.trim(clock.now)
    assert state.requests.total == 0 and not state.requests.events


def test_a_merged_entry_leaves_with_its_last_event() -> None:
    """Strict, never lenient: three requests 0.03 s apart (one entry) count until the last
    is a minute old."""
    clock = Clock()
    limits = Limits(clock)
    record = key(rpm=3)
    for _ in range(3):
        limits.admit(record, 1)
        limits.done(record)
        clock.now += 0.03
    assert len(limits._keys[record.id].requests.events) == 1
    clock.now = 100.0 + 60.05  # the first is a minute old, the last (at 100.06) is not
    with pytest.raises(Limited):
        limits.admit(record, 1)
    clock.now = 100.0 + 60.1
    limits.admit(record, 1)
