"""What the chat and Gemini surface tests share: Google's SDK on a running Switchyard, pictures
to send, the ledger to read what was billed, and Switchyard serving Nano Banana 2 from one real
protocol's host (a fake speaking its wire format)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
from google import genai
from google.genai import types
from PIL import Image as PILImage

from proxy.billing.keys import digest
from tests import protocol_kit as kit
from tests.conftest import Running, make_config, serve
from tests.fakes.fal import FakeFal
from tests.fakes.gemini import FakeGemini
from tests.fakes.replicate import FakeReplicate


def gemini(running: Running, key: str, api_version: str | None = None,
           headers: dict[str, str] | None = None) -> genai.Client:
    """google-genai, unmodified, pointed at Switchyard (its own default API version, v1,
    unless `api_version` says v1beta); it retries nothing unless told to."""
    return genai.Client(api_key=key, http_options=types.HttpOptions(
        base_url=running.base_url, api_version=api_version, headers=headers))


def picture(width: int, height: int, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", (width, height), (30, 120, 200)).save(out, fmt)
    return out.getvalue()


def opened(data: bytes) -> PILImage.Image:
    """The bytes as Pillow reads them: proof they are a whole image."""
    image = PILImage.open(io.BytesIO(data))
    image.load()
    return image


class Row(NamedTuple):
    request_id: str
    key_id: str
    outcome: str
    n_delivered: int
    billed_micros: int
    provider: str | None


def ledger(running: Running) -> list[Row]:
    with running.store() as store:
        rows: list[Any] = store.db.query(
            "SELECT request_id, key_id, outcome, n_delivered, billed_micros, provider "
            "FROM ledger ORDER BY created_at")
    return [Row(*row) for row in rows]


def key_id(running: Running, key: str) -> str:
    with running.store() as store:
        found = store.find_key(digest(key))
    assert found is not None, "no such key"
    return found[1].id


MODEL = """
name = "nano-banana-2"
aliases = ["gemini-3.1-flash-image"]
created = 2026-02-26

[capabilities]
aspect_ratios = ["1:1", "3:2", "2:3", "16:9", "9:16"]
max_n = 4
edits = true
max_reference_images = 14
output_formats = ["png"]

[[routes]]
provider = "{provider}"
upstream_model = "{upstream}"
typical_latency_s = 15
price.per_image = {{ "1K" = 0.08, "2K" = 0.12 }}
"""
FAST = "options = { poll_interval_s = 0.01, poll_interval_max_s = 0.05, max_wait_s = 30 }"


class Host(NamedTuple):
    provider: str
    upstream: str
    providers_toml: str
    key_env: str
    fake: Callable[[], httpx.AsyncBaseTransport]


HOSTS = {
    "fal": Host("fal", "fal-ai/nano-banana-2", f"""
[fal]
protocol = "fal"
base_url = "https://queue.fal.run"
key_env = "FAL_KEY"
allowed_hosts = ["fal.media", "*.fal.media"]
{FAST}
""", "FAL_KEY", FakeFal),
    "replicate": Host("replicate", "google/nano-banana-2", f"""
[replicate]
protocol = "replicate"
base_url = "https://api.replicate.com/v1"
key_env = "REPLICATE_API_TOKEN"
allowed_hosts = ["replicate.delivery", "*.replicate.delivery"]
{FAST}
""", "REPLICATE_API_TOKEN", lambda: FakeReplicate(wait_finishes=True)),
    "google": Host("google", "gemini-3.1-flash-image", """
[google]
protocol = "gemini"
base_url = "https://generativelanguage.googleapis.com/v1beta"
key_env = "GEMINI_API_KEY"
""", "GEMINI_API_KEY", FakeGemini),
}


@contextlib.contextmanager
def hosted(tmp_path: Path, host: Host) -> Iterator[tuple[Running, Any]]:
    """Switchyard serving nano-banana-2 from this host alone, and the host's fake."""
    model = MODEL.format(provider=host.provider, upstream=host.upstream)
    catalog = kit.write_catalog(tmp_path / "routes", host.providers_toml,
                                {"nano-banana-2": model}, {host.key_env: "test-key"})
    fake = host.fake()
    with serve(make_config(tmp_path / "data"), catalog, {host.provider: fake}) as running:
        yield running, fake
