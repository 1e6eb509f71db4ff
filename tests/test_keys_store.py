"""proxy.billing: keys are hashed at rest, listed without their text, and revocable."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.billing.keys import PREFIX, KeyFinder, KeyRecord, digest, hint, new_key, new_key_id
from proxy.billing.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "data" / "switchyard.db")
    yield opened
    opened.close()


def _on_disk(folder: Path) -> bytes:
    """Every byte SQLite keeps for the database: the main file, the WAL and its index."""
    return b"".join(p.read_bytes() for p in sorted(folder.glob("switchyard.db*")))


def test_new_key_shape() -> None:
    keys = {new_key() for _ in range(50)}
    assert len(keys) == 50
    assert PREFIX == "sy-"
    for key in keys:
        assert re.fullmatch(r"sy-[A-Za-z0-9_-]{43}", key)


def test_new_key_id_shape() -> None:
    assert re.fullmatch(r"key_[0-9a-f]{12}", new_key_id())
    assert new_key_id() != new_key_id()


def test_digest_is_sha256_hex() -> None:
    assert digest("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert digest("sy-a") != digest("sy-b")


@pytest.mark.parametrize(("key", "expected"), [
    ("sy-abcdefghijklmnopqrstuvwxyz", "sy-abcd…wxyz"),
    ("sy-0123456789", "sy-0123…6789"),
])
def test_hint(key: str, expected: str) -> None:
    assert hint(key) == expected


def test_hint_reveals_at_most_eleven_characters_of_a_real_key() -> None:
    key = new_key()
    shown = hint(key).replace("…", "")
    assert len(shown) == 11
    assert key not in hint(key)


def test_create_and_find(store: Store) -> None:
    record, key = store.create_key("alice")
    assert key.startswith("sy-")
    assert (record.name, record.tenant, record.hint) == ("alice", record.id, hint(key))
    assert record.active and record.revoked_at is None
    assert abs(record.created_at - time.time()) < 60
    found = store.find_key(digest(key))
    assert found == (digest(key), record)
    assert store.find_key(digest(key + "x")) is None


def test_create_with_a_tenant(store: Store) -> None:
    record, _ = store.create_key("ci-bot", tenant="acme")
    assert (record.name, record.tenant) == ("ci-bot", "acme")


def test_list_and_count(store: Store) -> None:
    assert store.list_keys() == []
    assert store.count_keys() == 0
    made = [store.create_key(name)[0] for name in ("a", "b", "c")]
    assert store.count_keys() == 3
    listed = store.list_keys()
    assert sorted(listed, key=lambda r: r.id) == sorted(made, key=lambda r: r.id)


def test_revoke(store: Store) -> None:
    first, key = store.create_key("a")
    second, _ = store.create_key("b")
    assert store.revoke_key(first.id) is True
    assert store.revoke_key(first.id) is False  # already revoked
    assert store.revoke_key("key_000000000000") is False
    states = {r.id: r.active for r in store.list_keys()}
    assert states == {first.id: False, second.id: True}
    found = store.find_key(digest(key))
    assert found is not None
    assert found[1].revoked_at is not None and found[1].revoked_at >= first.created_at
    assert store.count_keys() == 2  # revoked keys stay, for the ledger


def test_keys_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "switchyard.db"
    first = Store(path)
    record, key = first.create_key("a")
    first.close()
    again = Store(path)  # migrations already applied: must not run twice
    try:
        assert again.list_keys() == [record]
        assert again.find_key(digest(key)) == (digest(key), record)
    finally:
        again.close()


def test_plain_key_is_never_written_to_disk(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    store = Store(folder / "switchyard.db")
    _, key = store.create_key("alice")
    written = _on_disk(folder)  # while open the row may sit in the WAL only
    assert digest(key).encode() in written  # we are looking where the row really is
    assert key.encode() not in written
    store.close()
    written = _on_disk(folder)
    assert digest(key).encode() in written
    assert key.encode() not in written
    assert key[len(PREFIX):].encode() not in written


class CountingLookup:
    """A store double that counts database lookups."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls = 0

    def find_key(self, key_hash: str) -> tuple[str, KeyRecord] | None:
        self.calls += 1
        return self.store.find_key(key_hash)


def test_finder_returns_active_keys_and_caches_them(store: Store) -> None:
    record, key = store.create_key("alice")
    lookup = CountingLookup(store)
    finder = KeyFinder(lookup, ttl_s=60)
    assert asyncio.run(finder.find(key)) == record
    assert asyncio.run(finder.find(key)) == record
    assert lookup.calls == 1


def test_finder_rejects_unknown_keys_every_time(store: Store) -> None:
    lookup = CountingLookup(store)
    finder = KeyFinder(lookup, ttl_s=60)
    for _ in range(2):
        assert asyncio.run(finder.find("sy-not-a-key")) is None
    assert asyncio.run(finder.find("")) is None
    assert lookup.calls == 3  # misses are not cached: a new key works at once


def test_revoked_key_stops_working_after_the_ttl(store: Store) -> None:
    record, key = store.create_key("alice")
    finder = KeyFinder(store, ttl_s=0.05)
    assert asyncio.run(finder.find(key)) == record
    assert store.revoke_key(record.id)
    time.sleep(0.1)
    assert asyncio.run(finder.find(key)) is None
    assert asyncio.run(finder.find(key)) is None  # and stays rejected


def test_revoked_key_is_served_from_cache_until_the_ttl(store: Store) -> None:
    record, key = store.create_key("alice")
    finder = KeyFinder(store, ttl_s=60)
    assert asyncio.run(finder.find(key)) == record
    store.revoke_key(record.id)
    # The documented window: another process's revoke is seen only when the entry expires.
    assert asyncio.run(finder.find(key)) == record


def test_forget_ends_the_cache_at_once(store: Store) -> None:
    record, key = store.create_key("alice")
    finder = KeyFinder(store, ttl_s=60)
    assert asyncio.run(finder.find(key)) == record
    store.revoke_key(record.id)
    finder.forget(digest(key))
    assert asyncio.run(finder.find(key)) is None
    finder.forget(digest("sy-never-cached"))  # forgetting an unknown key is harmless
    assert asyncio.run(finder.find(key)) is None


def test_finder_rejects_a_revoked_key_on_first_sight(store: Store) -> None:
    record, key = store.create_key("alice")
    store.revoke_key(record.id)
    lookup = CountingLookup(store)
    finder = KeyFinder(lookup, ttl_s=60)
    assert asyncio.run(finder.find(key)) is None
    assert asyncio.run(finder.find(key)) is None
    assert lookup.calls == 2  # a revoked record is never cached
