"""What replicas share through the billing database, on both engines: the image store behind
links (put, read, sweep), the secrets stored once whoever comes first, and which store and
secret a server picks (the data directory on SQLite, the database on PostgreSQL)."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from proxy import shared
from proxy.billing.images import Images, StoredImage
from proxy.billing.shared_secrets import shared_secret
from proxy.billing.store import Store
from proxy.config import Config, ConfigError, load
from proxy.media import DirectoryImages, MediaStore, load_or_create_secret

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64
TTL = 3600


def test_an_image_is_read_back_whole_with_its_type(database: str) -> None:
    with Store(database) as store:
        images = Images(store.db, TTL)
        images.put("a.png", PNG, "image/png")
        images.put("b.webp", b"RIFF....WEBP", "image/webp")
        assert images.read("a.png") == StoredImage(PNG, "image/png")
        assert images.read("b.webp") == StoredImage(b"RIFF....WEBP", "image/webp")
        assert images.read("nope.png") is None


def test_an_image_stored_by_one_replica_is_read_by_another(database: str) -> None:
    with Store(database) as one, Store(database) as other:
        Images(one.db, TTL).put("shared.png", PNG, "image/png")
        assert Images(other.db, TTL).read("shared.png") == StoredImage(PNG, "image/png")


def test_the_sweep_deletes_only_expired_images_and_may_run_twice(database: str) -> None:
    with Store(database) as one, Store(database) as other:
        Images(one.db, TTL).put("old.png", PNG, "image/png")
        Images(one.db, 10 * TTL).put("young.png", PNG, "image/png")
        later = time.time() + TTL + 1
        assert Images(one.db, TTL).sweep(now=later) == 1
        assert Images(other.db, TTL).sweep(now=later) == 0  # another replica: nothing left
        assert Images(one.db, TTL).read("old.png") is None
        assert Images(one.db, TTL).read("young.png") is not None


def test_a_secret_is_stored_once_whoever_offers_one(database: str) -> None:
    with Store(database) as one, Store(database) as other:
        first = shared_secret(one.db, "url-signing", b"a" * 32)
        assert first == b"a" * 32
        assert shared_secret(other.db, "url-signing", b"b" * 32) == first
        assert shared_secret(other.db, "webhook-signing", b"c" * 32) == b"c" * 32


def test_replicas_starting_together_agree_on_one_secret(database: str) -> None:
    stores = [Store(database) for _ in range(4)]
    start, found = threading.Barrier(8), []

    def replica(index: int) -> None:
        start.wait()
        found.append(shared_secret(stores[index % 4].db, "race", bytes([index]) * 32))

    threads = [threading.Thread(target=replica, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for store in stores:
        store.close()
    assert len(found) == 8 and len(set(found)) == 1


def _config(tmp_path: Path, database: str, name: str, **settings: object) -> Config:
    return load(env={}, data_dir=tmp_path / name, **settings,
                database_url=database if database.startswith("postgresql") else None)


def _link_parts(link: str) -> tuple[str, str, str]:
    url = urlsplit(link)
    query = parse_qs(url.query)
    return url.path.rsplit("/", 1)[1], query["expires"][0], query["sig"][0]


def test_on_postgres_every_replica_signs_and_serves_the_same(tmp_path: Path,
                                                              postgres_url: str) -> None:
    """Two replicas with data directories of their own: a link one mints is good on the
    other, which has the image too; webhooks are signed with one secret."""
    a, b = (_config(tmp_path, postgres_url, name) for name in ("a", "b"))
    with Store(a.database) as store_a, Store(b.database) as store_b:
        media_a, media_b = shared.media_store(a, store_a.db), shared.media_store(b, store_b.db)
        name = asyncio.run(media_a.put(PNG, "image/png"))
        link = media_a.link("http://replica-a", name)
        assert media_b.verify(*_link_parts(link))
        assert asyncio.run(media_b.read(name)) == StoredImage(PNG, "image/png")
        assert shared.webhook_secret(a, store_a.db) == shared.webhook_secret(b, store_b.db)
    assert not (tmp_path / "a" / "images").exists()  # nothing in a replica's own directory


def test_on_postgres_a_data_directorys_secret_from_before_is_offered(
        tmp_path: Path, postgres_url: str) -> None:
    """A server that had its secret in its data directory keeps it when it moves to a
    shared database first (its links and its receivers go on working)."""
    before = load_or_create_secret(tmp_path / "a" / "webhook-signing.key")
    a, b = (_config(tmp_path, postgres_url, name) for name in ("a", "b"))
    with Store(a.database) as store:
        assert shared.webhook_secret(a, store.db) == "whsec_" + base64.b64encode(before).decode()
        assert shared.webhook_secret(b, store.db) == shared.webhook_secret(a, store.db)


def test_on_sqlite_the_data_directory_keeps_its_files(tmp_path: Path) -> None:
    """The single-server default, as before: secrets and images are files in the data
    directory, and a directory from before keeps its secrets."""
    before = load_or_create_secret(tmp_path / "a" / "url-signing.key")
    config = _config(tmp_path, str(tmp_path / "a" / "switchyard.db"), "a")
    with Store(config.database) as store:
        assert isinstance(shared.image_store(config, store.db), DirectoryImages)
        media = shared.media_store(config, store.db)
        name = asyncio.run(media.put(PNG, "image/png"))
        assert (tmp_path / "a" / "images" / name).read_bytes() == PNG
        with_before = MediaStore(DirectoryImages(tmp_path / "elsewhere", TTL), before, TTL)
        assert with_before.verify(*_link_parts(media.link("http://x", name)))
        whsec = shared.webhook_secret(config, store.db)
        made = (tmp_path / "a" / "webhook-signing.key").read_bytes()
        assert whsec == "whsec_" + base64.b64encode(made).decode()
        assert store.db.query("SELECT COUNT(*) FROM shared_secrets")[0][0] == 0


def test_a_configured_webhook_secret_is_used_as_it_is(tmp_path: Path, database: str) -> None:
    given = "whsec_" + base64.b64encode(b"s" * 24).decode()
    config = _config(tmp_path, database, "a", webhook_secret=given)
    with Store(config.database) as store:
        assert shared.webhook_secret(config, store.db) == given
    assert given not in repr(config)


@pytest.mark.parametrize("bad", ["s3cret", "whsec_not base64!", "whsec_" + "QUJD"])
def test_a_webhook_secret_that_is_not_whsec_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="webhook_secret"):
        load(env={"SWITCHYARD_WEBHOOK_SECRET": bad})
