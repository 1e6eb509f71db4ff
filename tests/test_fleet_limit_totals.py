"""A key's window totals in Redis always match the window's entries (issue 17, point 1): a
refused request's trim is written too, and totals lost alone (evicted) are counted again from
the entries; else a busy key was refused under its rpm and ipm, or let past them."""

from __future__ import annotations

import asyncio

import pytest

from proxy.billing import limits as limits_module
from proxy.billing.limits import Limited, Limits
from proxy.state import shared_limits
from proxy.state.shared_limits import SharedLimits
from tests.redis_servers import redis_prefix
from tests.test_state_redis import key, refused, replica, run

__all__ = ["redis_prefix"]  # a fixture


def test_a_refused_request_s_trim_is_kept_in_the_totals(
        redis_prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refusal drops the entries that left the window, and the stored totals with them:
    they stayed counted until the list emptied, so a busy key (refused for its concurrency,
    say) was refused under its rpm and ipm. Answers as one process does (a 1 s "minute")."""
    monkeypatch.setattr(shared_limits, "_WINDOW_MS", 1000)
    monkeypatch.setattr(limits_module, "WINDOW_S", 1.0)
    steps = [(0.0, 3), (0.5, 1), (0.6, 4), (0.1, 3)]  # (wait before, images): ipm 4

    async def fleet() -> list[bool]:
        async with replica(redis_prefix) as link:
            shared, record, admitted = SharedLimits(link), key(ipm=4), []
            for wait, images in steps:
                await asyncio.sleep(wait)
                try:
                    await shared.admit(record, images)
                    admitted.append(True)
                except Limited:
                    admitted.append(False)
            base = f"{redis_prefix}:key:{{{record.id}}}"
            window = await link.client.lrange(f"{base}:window", 0, -1)
            totals = await link.client.hgetall(f"{base}:totals")
            assert int(totals[b"images"]) == sum(int(e.split()[3]) for e in window)
            return admitted

    now = [0.0]
    local, record, alone = Limits(lambda: now[0]), key(ipm=4), []
    for wait, images in steps:
        now[0] += wait
        try:
            local.admit(record, images)
            alone.append(True)
        except Limited:
            alone.append(False)
    assert alone == [True, True, False, True]
    assert run(fleet) == alone


def test_totals_lost_alone_are_counted_again_from_the_window(redis_prefix: str) -> None:
    """A totals hash evicted while its window's list lived (Redis under maxmemory) is counted
    again from the entries, and kept with an expiry: not taken as zero."""
    async def go() -> None:
        async with replica(redis_prefix) as link:
            shared, record = SharedLimits(link), key(ipm=3)
            await shared.admit(record, 2)
            totals = f"{redis_prefix}:key:{{{record.id}}}:totals"
            await link.client.delete(totals)
            assert "used 2, requested 2" in (await refused(shared.admit(record, 2))).message
            assert await link.client.hgetall(totals) == {b"requests": b"1", b"images": b"2"}
            assert await link.client.pttl(totals) > 0
    run(go)
