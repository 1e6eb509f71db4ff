"""The official openai Node SDK (tests/node, installed by `npm ci` there) against a real
`switchyard serve`, in front of a fake OpenAI on a real socket that streams partial images:
`client.images.generate({..., stream: true, partial_images: 2})` iterated with `for await`.

In CI (CI=true) it always runs; elsewhere it skips, saying why, without node or the package."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.billing.store import Store
from tests.fakes.openai_stream import KEY_ENV, MODEL, StreamHost, catalog_files, on_own_loop
from tests.serving import Served

NODE_DIR = Path(__file__).parent / "node"


def _node() -> str:
    """The node binary, when it and the SDK are installed; else fail in CI or skip."""
    node = shutil.which("node")
    missing = "node is not installed" if node is None else \
        "the openai package is not installed (run `npm ci` in tests/node)" \
        if not (NODE_DIR / "node_modules" / "openai").is_dir() else None
    if missing is None and node is not None:
        return node
    if os.environ.get("CI") == "true":
        pytest.fail(f"{missing}: .ci/run installs it")
    pytest.skip(missing or "")


@pytest.fixture(scope="module")
def host() -> Iterator[StreamHost]:
    fake = StreamHost()
    with on_own_loop(fake):
        yield fake


def streamed(tmp_path: Path, host: StreamHost, scripts: dict[str, tuple[str, ...]]
             ) -> list[dict[str, Any]]:
    """What the Node script printed, one JSON object per event (or its error)."""
    node = _node()
    host.scripts, host.calls[:] = scripts, []
    routes = tmp_path / "routes"
    for name, text in catalog_files(host).items():
        (routes / name).parent.mkdir(parents=True, exist_ok=True)
        (routes / name).write_text(text)
    env = {"SWITCHYARD_ROUTES_DIR": str(routes), KEY_ENV: "sk-test"}
    with Served(tmp_path / "data", env=env) as served:
        with Store(str(tmp_path / "data" / "switchyard.db")) as store:
            key = store.create_key("node")[1]
        done = subprocess.run(
            [node, "stream_images.mjs", MODEL], cwd=NODE_DIR, capture_output=True, timeout=60,
            env={**os.environ, "OPENAI_BASE_URL": f"{served.base}/v1", "OPENAI_API_KEY": key})
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return [orjson.loads(line) for line in done.stdout.splitlines() if line.strip()]


def test_node_sdk_iterates_relayed_partials_then_the_completed_image(
        tmp_path: Path, host: StreamHost) -> None:
    printed = streamed(tmp_path, host, {"a": ("partial", "partial", "completed")})
    assert [(e["type"], e["partial_image_index"]) for e in printed] == [
        ("image_generation.partial_image", 0), ("image_generation.partial_image", 1),
        ("image_generation.completed", None)]
    assert all(e["png"] and e["output_format"] == "png" and e["size"] == "1024x1024"
               for e in printed)
    assert printed[-1]["total_tokens"] == 100 and printed[-1]["provider"] == "stream-a"
    (call,) = host.calls
    assert call[1]["stream"] is True and call[1]["partial_images"] == 2


def test_node_sdk_raises_the_error_event_after_a_partial(tmp_path: Path,
                                                         host: StreamHost) -> None:
    printed = streamed(tmp_path, host, {"a": ("partial", "drop"), "b": ("completed",)})
    assert [e.get("type") for e in printed[:-1]] == ["image_generation.partial_image"]
    assert "error" in printed[-1] and printed[-1]["type"] == "upstream_error"
    assert [name for name, _ in host.calls] == ["a"]
