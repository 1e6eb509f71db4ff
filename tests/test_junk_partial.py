"""A host's partial image that is not an image (its completed image is checked by
proxy/verify.py and would fail over) is relayed to the client as it is, and commits the run
to that host: no partial_image event may carry bytes that are not an image."""

from __future__ import annotations

import base64
import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from PIL import Image as PILImage

from proxy import catalog
from proxy.providers import ADAPTERS
from tests.conftest import make_config, serve
from tests.fakes import openai_stream
from tests.fakes.openai_stream import KEY_ENV, MODEL, StreamHost, catalog_files, on_own_loop

_real_event = openai_stream._event


def _event(kind: str, step: str, partials: Iterator[int]) -> bytes:
    if step == "junk":  # a partial_image event whose b64_json is text, not a picture
        event = _real_event(kind, "partial", partials)
        head, _, rest = event.partition(b'"b64_json":"')
        _, _, tail = rest.partition(b'"')
        return head + b'"b64_json":"' + base64.b64encode(b"<html>oops</html>") + b'"' + tail
    return _real_event(kind, step, partials)


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> Iterator[StreamHost]:
    monkeypatch.setattr(openai_stream, "_event", _event)
    fake = StreamHost()
    with on_own_loop(fake):
        yield fake


def test_a_partial_that_is_not_an_image_is_not_relayed(tmp_path: Path,
                                                        host: StreamHost) -> None:
    host.scripts = {"a": ("junk", "completed"), "b": ("partial", "completed")}
    routes = tmp_path / "routes"
    for name, text in catalog_files(host).items():
        (routes / name).parent.mkdir(parents=True, exist_ok=True)
        (routes / name).write_text(text)
    live = catalog.load(routes, {KEY_ENV: "sk-test"}, False, ADAPTERS)
    with serve(make_config(tmp_path / "data", routes_dir=routes), live) as running, \
            openai.OpenAI(base_url=running.v1, api_key=running.new_key(), max_retries=0,
                          timeout=30) as sdk:
        events = list(sdk.images.generate(model=MODEL, prompt="a fox", stream=True,
                                          partial_images=1))
    broken = [(event.type, event.b64_json[:24]) for event in events
              if not _is_image(event.b64_json)]
    assert not broken, broken
    assert events[-1].type == "image_generation.completed"


def _is_image(b64: str) -> bool:
    try:
        with contextlib.closing(PILImage.open(io.BytesIO(base64.b64decode(b64)))) as picture:
            picture.load()
    except Exception:
        return False
    return True
