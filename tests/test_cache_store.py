"""The response cache's store on SQLite and PostgreSQL: entries found while fresh, bounded in
bytes with the least recently used out first, and shared by the replicas of a fleet (two
servers on one PostgreSQL: what one stored, the other answers from)."""

from __future__ import annotations

import time
from pathlib import Path

import openai

from proxy.billing.keys import KeyLimits
from proxy.billing.store import Store
from tests.conftest import make_config, serve
from tests.fakes.sim_wrap import wrapped


def test_an_entry_is_found_while_fresh_enough(database: str) -> None:
    with Store(database) as store:
        cache = store.cache
        assert cache.put("k1", "tenant", "m", b"x" * 100, 60, 10_000).kept
        now = int(time.time())
        found = cache.get("k1", now - 60)
        assert found is not None and found.body == b"x" * 100
        assert cache.get("k1", now + 5) is None, "older than the asker accepts"
        assert cache.get("k1", 0, now=now + 61) is None, "expired"
        assert cache.get("nothing", 0) is None
        # The same key again replaces the entry.
        cache.put("k1", "tenant", "m", b"y" * 50, 60, 10_000)
        assert cache.total_bytes() == 50


def test_the_least_recently_used_go_first_and_a_giant_is_not_kept(database: str) -> None:
    with Store(database) as store:
        cache = store.cache
        for key in ("a", "b", "c"):
            cache.put(key, "t", "m", b"." * 400, 60, 1000)
        assert cache.total_bytes() == 1000 - 1000 % 400  # a went: two fit in 1000
        assert cache.get("a", 0) is None
        assert cache.get("b", 0) is not None  # b is now used more recently than c
        stored = cache.put("d", "t", "m", b"." * 400, 60, 1000)
        assert stored.kept and stored.evicted == 1 and stored.total_bytes == 800
        assert cache.get("c", 0) is None and cache.get("b", 0) is not None
        giant = cache.put("e", "t", "m", b"." * 1001, 60, 1000)
        assert not giant.kept and cache.get("e", 0) is None


def test_a_keys_cache_setting_is_kept(database: str) -> None:
    with Store(database) as store:
        record, _ = store.create_key("cached", limits=KeyLimits(cache_ttl_s=120))
        found = store.get_key(record.id)
        assert found is not None and found.limits.cache_ttl_s == 120
        store.update_limits(record.id, KeyLimits(cache_ttl_s=0))
        again = store.get_key(record.id)
        assert again is not None and again.limits.cache_ttl_s == 0


def test_replicas_on_one_postgresql_share_the_cache(postgres_url: str, tmp_path: Path) -> None:
    first = make_config(tmp_path / "a", database_url=postgres_url)
    second = make_config(tmp_path / "b", database_url=postgres_url)
    hosts_a, hosts_b = wrapped(first, ("sim-cheap",)), wrapped(second, ("sim-cheap",))
    with serve(first, transports=hosts_a) as a, serve(second, transports=hosts_b) as b:
        key = a.new_key()
        answers = []
        for replica in (a, b):
            with openai.OpenAI(base_url=replica.v1, api_key=key, max_retries=0) as sdk:
                answers.append(sdk.images.with_raw_response.generate(
                    model="test-image", prompt="one fleet", extra_body={
                        "cache": {"ttl_s": 600}}))
    assert [raw.headers["x-switchyard-cache"] for raw in answers] == ["miss", "hit"]
    assert (hosts_a["sim-cheap"].calls, hosts_b["sim-cheap"].calls) == (1, 0)
