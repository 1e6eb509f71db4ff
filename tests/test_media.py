"""proxy.media: signed, expiring image links, safe reads, and the sweep of old files."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import stat
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from proxy.billing.images import StoredImage
from proxy.media import DirectoryImages, MediaStore, load_or_create_secret

SECRET = b"k" * 32
NOW = 1_800_000_000.0
TTL = 3600
BASE = "https://switchyard.example"


@pytest.fixture
def media(tmp_path: Path) -> MediaStore:
    return MediaStore(DirectoryImages(tmp_path / "images", TTL), SECRET, TTL)


def _parts(link: str) -> tuple[str, str, str, str]:
    """(path, name, expires, sig) of a link."""
    url = urlsplit(link)
    query = parse_qs(url.query)
    return url.path, url.path.rsplit("/", 1)[1], query["expires"][0], query["sig"][0]


def test_link_shape(media: MediaStore) -> None:
    link = media.link(BASE, "abc.png", now=NOW)
    assert link.startswith(f"{BASE}/images/abc.png?expires=")
    path, name, expires, sig = _parts(link)
    assert (path, name, int(expires)) == ("/images/abc.png", "abc.png", int(NOW) + TTL)
    assert len(sig) == 64 and int(sig, 16) >= 0


def test_signed_link_verifies(media: MediaStore) -> None:
    _, name, expires, sig = _parts(media.link(BASE, "abc.png", now=NOW))
    assert media.verify(name, expires, sig, now=NOW) is True
    assert media.verify(name, expires, sig, now=NOW + TTL) is True  # the last valid second


@pytest.mark.parametrize("change", ["sig", "name", "expires", "secret", "garbled-expires"])
def test_tampered_link_fails(tmp_path: Path, media: MediaStore, change: str) -> None:
    _, name, expires, sig = _parts(media.link(BASE, "abc.png", now=NOW))
    checker = media
    if change == "sig":
        sig = ("0" if sig[0] != "0" else "1") + sig[1:]
    elif change == "name":
        name = "abd.png"
    elif change == "expires":
        expires = str(int(expires) + 86400)  # stretch the lifetime
    elif change == "secret":
        checker = MediaStore(DirectoryImages(tmp_path / "other", TTL), b"x" * 32, TTL)
    else:
        expires = f"{expires}.0"
    assert checker.verify(name, expires, sig, now=NOW) is False


@pytest.mark.parametrize("expires", ["", "-1", "abc", "1e12"])
def test_verify_rejects_malformed_expiry(media: MediaStore, expires: str) -> None:
    assert media.verify("abc.png", expires, "0" * 64, now=NOW) is False


def test_expired_link_fails(media: MediaStore) -> None:
    _, name, expires, sig = _parts(media.link(BASE, "abc.png", now=NOW))
    assert media.verify(name, expires, sig, now=NOW + TTL + 1) is False
    assert media.verify(name, expires, sig, now=NOW + 10 * TTL) is False


@pytest.mark.parametrize(("mime", "ext"), [
    ("image/png", ".png"), ("image/jpeg", ".jpeg"), ("image/webp", ".webp"),
    ("application/octet-stream", ".bin"),
])
def test_put_then_read(media: MediaStore, tmp_path: Path, mime: str, ext: str) -> None:
    data = b"\x89PNG\r\n\x1a\n" + os.urandom(64)
    name = asyncio.run(media.put(data, mime))
    assert name.endswith(ext)
    assert "/" not in name and not name.startswith(".")
    assert (tmp_path / "images" / name).read_bytes() == data
    assert asyncio.run(media.read(name)) == StoredImage(data, mime)


def test_put_names_are_unique(media: MediaStore) -> None:
    names = {asyncio.run(media.put(b"x", "image/png")) for _ in range(20)}
    assert len(names) == 20


def test_read_missing_returns_none(media: MediaStore) -> None:
    assert asyncio.run(media.read("nope.png")) is None


@pytest.mark.parametrize("name", [
    "../secret.key", "sub/file.png", "/etc/passwd", ".hidden", "..", ".", "a/../b.png",
])
def test_read_rejects_paths_outside_the_folder(tmp_path: Path, media: MediaStore,
                                               name: str) -> None:
    (tmp_path / "secret.key").write_bytes(b"top secret")
    (tmp_path / "images" / ".hidden").write_bytes(b"dotfile")
    (tmp_path / "images" / "sub").mkdir()
    (tmp_path / "images" / "sub" / "file.png").write_bytes(b"nested")
    assert asyncio.run(media.read(name)) is None


def test_sweep_deletes_only_files_older_than_the_ttl(tmp_path: Path, media: MediaStore) -> None:
    folder = tmp_path / "images"
    ages = {"old.png": TTL + 60, "ancient.png": 10 * TTL, "fresh.png": 60, "edge.png": TTL - 1}
    for name, age in ages.items():
        (folder / name).write_bytes(b"x")
        os.utime(folder / name, (NOW - age, NOW - age))
    assert media.sweep(now=NOW) == 2
    assert sorted(p.name for p in folder.iterdir()) == ["edge.png", "fresh.png"]
    assert media.sweep(now=NOW) == 0
    assert media.sweep(now=NOW + TTL) == 2
    assert list(folder.iterdir()) == []


def test_store_creates_its_folder(tmp_path: Path) -> None:
    DirectoryImages(tmp_path / "a" / "b", TTL)
    assert (tmp_path / "a" / "b").is_dir()


def test_secret_is_made_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "data" / "url-signing.key"
    first = load_or_create_secret(path)
    assert len(first) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(path) == first
    assert load_or_create_secret(tmp_path / "other.key") != first


def test_links_survive_a_restart_with_the_same_secret(tmp_path: Path) -> None:
    secret = load_or_create_secret(tmp_path / "url-signing.key")
    images = DirectoryImages(tmp_path / "i", TTL)
    _, name, expires, sig = _parts(MediaStore(images, secret, TTL).link(BASE, "a.png", now=NOW))
    again = MediaStore(images, load_or_create_secret(tmp_path / "url-signing.key"), TTL)
    assert again.verify(name, expires, sig, now=NOW) is True


def test_processes_starting_together_read_one_whole_secret(tmp_path: Path) -> None:
    """`serve --workers N` on a fresh data directory: every worker makes the secret at once;
    each gets the same 32 bytes (one was never read half-written, nor made twice)."""
    path = tmp_path / "data" / "url-signing.key"
    with concurrent.futures.ProcessPoolExecutor(4) as pool:
        found = set(pool.map(load_or_create_secret, [path] * 16))
    assert found == {path.read_bytes()} and len(path.read_bytes()) == 32
    assert [p.name for p in path.parent.iterdir()] == ["url-signing.key"]  # no drafts left
