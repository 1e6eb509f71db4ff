"""What the protocol tests share: the standard request and route, one attempt through the real
driver, decoding what comes back, and a real Switchyard serving a catalog written for a fake."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from PIL import Image as PILImage

from proxy import catalog as catalog_module
from proxy.catalog import Capabilities, Catalog, Provider, Route
from proxy.config import Secret
from proxy.domain import Geometry, Image, ImageRequest, ImageResult, InputImage
from proxy.failures import Failure, UpstreamError
from proxy.providers import ADAPTERS, flows
from proxy.providers.base import Adapter, UpstreamReply
from tests.conftest import Running, make_config, serve

PROMPT = "a banana astronaut"
# Route options that make unit tests poll fast: route options win over the provider's pacing.
FAST = {"poll_interval_s": 0.01, "poll_interval_max_s": 0.02}
PNG = b"\x89PNG-bytes"  # uploaded reference bytes: only passed on, never decoded
REFERENCE_URL = "https://example.com/a.jpg"

Start = Callable[..., openai.OpenAI]
Validate = Callable[[str, Any], None]


# --- Unit tests: a request, a route, one attempt ---------------------------------------------


def make_request(**changes: Any) -> ImageRequest:
    """One 2K 16:9 PNG of the banana astronaut, as base64; `changes` replace any field."""
    request = ImageRequest(kind="generate", model="nano-banana-2", prompt=PROMPT, n=1,
                           geometry=Geometry("16:9", "2K", None, "aspect_ratio"),
                           output_format="png", response_format="b64_json")
    return replace(request, **changes)


def edit_request(*images: InputImage, **changes: Any) -> ImageRequest:
    """An edit with no size asked (the model keeps its input's shape) of `images`, by default
    uploaded PNG bytes and a JPEG URL."""
    images = images or (InputImage("image/png", data=PNG),
                        InputImage("image/jpeg", url=REFERENCE_URL))
    edit = {"kind": "edit", "geometry": Geometry("1:1", "1K", None, "default"), "images": images}
    return make_request(**{**edit, **changes})


@dataclass(frozen=True)
class Upstream:
    """A protocol's provider as its unit tests route to it: a test key, fast polls, and the
    nano-banana-2 route that `route(options, key, model)` builds."""

    protocol: str
    base_url: str
    key_env: str
    allowed_hosts: tuple[str, ...]
    model: str
    price: str  # per 1K image
    tiers: tuple[str, ...] = ("1K", "2K")
    timeout_s: float = 60

    def route(self, options: dict[str, Any] | None = None, key: str | None = "test-key",
              model: str | None = None) -> Route:
        provider = Provider(name=self.protocol, protocol=self.protocol, base_url=self.base_url,
                            key=Secret(key) if key else None, key_env=self.key_env,
                            timeout_s=self.timeout_s, allowed_hosts=self.allowed_hosts)
        caps = Capabilities(tiers=self.tiers, aspect_ratios=("1:1", "16:9"), edits=True,
                            max_reference_images=14, max_n=4)
        return Route(id=f"nano-banana-2/{self.protocol}", model="nano-banana-2",
                     provider=provider, upstream_model=model or self.model,
                     price_per_image={"1K": Decimal(self.price)}, capabilities=caps,
                     options={**FAST, **(options or {})})


def run(adapter: Adapter, fake: httpx.AsyncBaseTransport, request: ImageRequest, route: Route,
        within_s: float = 10.0) -> ImageResult:
    """One attempt through the real driver (flows.generate), as the router makes it."""
    async def go() -> ImageResult:
        async with httpx.AsyncClient(transport=fake) as client:
            return await flows.generate(adapter, route, request, client,
                                        time.monotonic() + within_s)
    return asyncio.run(go())


def failure_of(adapter: Adapter, fake: httpx.AsyncBaseTransport, request: ImageRequest,
               route: Route, within_s: float = 10.0) -> Failure:
    """The failure an attempt ends in (the test fails if it succeeds)."""
    with pytest.raises(UpstreamError) as caught:
        run(adapter, fake, request, route, within_s)
    return caught.value.failure


def reply(body: Any, status: int = 200, headers: Mapping[str, str] | None = None
          ) -> UpstreamReply:
    """A recorded reply to send into a flow by hand."""
    return UpstreamReply(status, httpx.Headers(headers or {}), orjson.dumps(body))


def decoded(image: Image | str) -> PILImage.Image:
    """The image as Pillow reads it: proof the bytes are a real, whole image."""
    b64 = image if isinstance(image, str) else image.b64
    picture = PILImage.open(io.BytesIO(base64.b64decode(b64)))
    picture.load()
    return picture


def red_png(size: int = 32) -> bytes:
    """A small red PNG, as a client uploads it for an edit."""
    out = io.BytesIO()
    PILImage.new("RGB", (size, size), (200, 10, 10)).save(out, "PNG")
    return out.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


# --- End to end: openai SDK -> a real Switchyard -> the fake ----------------------------------

NANO_BANANA_2 = """
name = "nano-banana-2"
created = 2026-11-01

[capabilities]
aspect_ratios = ["1:1", "3:2", "2:3", "16:9", "9:16"]
max_n = 4
edits = true
max_reference_images = 14
output_formats = {formats}
"""


def nano_banana_2(routes: str, formats: str = '["png", "jpeg", "webp"]') -> str:
    """The nano-banana-2 model file the end-to-end tests serve, with these [[routes]]."""
    return NANO_BANANA_2.format(formats=formats) + routes


def write_catalog(root: Path, providers: str, models: Mapping[str, str],
                  keys: Mapping[str, str]) -> Catalog:
    """A routes directory of providers.toml and one file per model, loaded with these keys."""
    (root / "models").mkdir(parents=True)
    (root / "providers.toml").write_text(providers)
    for name, text in models.items():
        (root / "models" / f"{name}.toml").write_text(text)
    return catalog_module.load(root, env=dict(keys), demo=False, protocols=ADAPTERS)


def client(running: Running) -> openai.OpenAI:
    """The official SDK on a running Switchyard, with a fresh key and no retries of its own."""
    return openai.OpenAI(base_url=running.v1, api_key=running.new_key(), max_retries=0)


def sdk_on(stack: contextlib.ExitStack, data_dir: Path, catalog: Catalog,
           fakes: Mapping[str, httpx.AsyncBaseTransport], **config: Any) -> openai.OpenAI:
    """Serve the catalog with these fakes as its providers until the stack closes; the SDK."""
    running = stack.enter_context(serve(make_config(data_dir, **config), catalog, fakes))
    return stack.enter_context(client(running))


@contextlib.contextmanager
def switchyard(tmp_path: Path, provider: str, catalog: Catalog) -> Iterator[Start]:
    """start(fake, **config) -> an SDK client on a real Switchyard whose `provider` is the fake
    (config: settings such as request_timeout_s)."""
    with contextlib.ExitStack() as stack:
        def start(fake: httpx.AsyncBaseTransport, **config: Any) -> openai.OpenAI:
            return sdk_on(stack, tmp_path / "data", catalog, {provider: fake}, **config)
        yield start


def assert_two_pngs(raw: Any, size: tuple[int, int]) -> None:
    """A generation's answer holds two images, each a real PNG of that size."""
    data = raw.parse().data or []
    assert len(data) == 2
    for item in data:
        image = decoded(item.b64_json or "")
        assert image.format == "PNG" and image.size == size


def error_of(sdk: openai.OpenAI, validate: Validate, model: str = "nano-banana-2",
             prompt: str = "a red fox") -> tuple[int, dict[str, Any], str | None]:
    """A generation that fails: its HTTP status, its OpenAI-shaped error body (checked against
    the schema) and its Retry-After."""
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.images.generate(model=model, prompt=prompt)
    body = caught.value.response.json()
    validate("ErrorResponse", body)
    return caught.value.status_code, body, caught.value.response.headers.get("retry-after")
