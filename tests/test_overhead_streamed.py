"""Image responses sent in slices (proxy.api.streamed): byte for byte what orjson.dumps would
send, with an exact Content-Length; and end to end, a real upstream on a socket through the
lean transport and back out through the official SDK."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from starlette.background import BackgroundTask
from starlette.types import Receive, Scope, Send

from proxy.api import streamed
from proxy.bench import procs, real_images
from tests.conftest import make_config, serve

BIG = base64.b64encode(bytes(range(256)) * 2000).decode()  # 682,668 characters


@pytest.mark.parametrize("document", [
    {"created": 1, "data": [{"b64_json": BIG, "revised_prompt": 'a "quoted" fox'}]},
    {"data": [{"b64_json": BIG}, {"b64_json": BIG[::-1]}, {"b64_json": "small"}], "n": 3},
    {"data": [{"b64_json": BIG + "\n\x00\"é\\" + BIG}]},  # escapes and UTF-8 across slices
    {"data": [{"b64_json": BIG + "\x1f\"\\" + BIG}]},  # ASCII, yet with escapes
    {"same": [BIG, BIG], "nested": {"deep": [{"x": BIG}]}},  # one str object, three places
])
def test_the_pieces_are_what_orjson_would_write(document: dict[str, Any]) -> None:
    pieces = streamed.split(document)
    assert pieces is not None
    expected = orjson.dumps(document)
    assert pieces.join() == expected and pieces.length == len(expected)
    assert max(len(chunk) for chunk in pieces.chunks()) <= 2 * streamed.SLICE
    copies = [part for part in pieces.parts if isinstance(part, memoryview)]
    for chunk in pieces.chunks(whole=True):  # a copy whole, where the server keeps sends
        assert len(chunk) <= 2 * streamed.SLICE or any(chunk is copy for copy in copies)


def test_base64_goes_out_unescaped_and_anything_else_escaped() -> None:
    """The plain paths (no second escaping pass) are taken only by strings JSON leaves alone:
    up to WHOLE_MAX from one escaped copy, longer ones encoded slice by slice."""
    huge = BIG * (streamed.WHOLE_MAX // len(BIG) + 1)
    document = {"data": [{"b64_json": BIG}, {"b64_json": BIG + "\x01"}, {"b64_json": "é" + BIG},
                         {"b64_json": huge}]}
    pieces = streamed.split(document)
    assert pieces is not None and pieces.join() == orjson.dumps(document)
    kinds = [("copy" if isinstance(part, memoryview) else "plain" if plain else "escaped")
             for part, plain in zip(pieces.parts, pieces.plain, strict=True)
             if not isinstance(part, bytes)]
    assert kinds == ["copy", "escaped", "escaped", "plain"]


def test_a_response_of_many_images_holds_at_most_whole_max_characters_twice() -> None:
    """Each image up to WHOLE_MAX had its own escaped copy: n=10 images of 1.9 M characters
    held 19 MB more while they went out. Past WHOLE_MAX in all, they go slice by slice."""
    document = {"data": [{"b64_json": BIG[i:]} for i in range(5)]}  # 5 x 682 k characters
    pieces = streamed.split(document)
    assert pieces is not None and pieces.join() == orjson.dumps(document)
    copies = [part for part in pieces.parts if isinstance(part, memoryview)]
    assert sum(len(copy) for copy in copies) <= streamed.WHOLE_MAX
    assert len(copies) == streamed.WHOLE_MAX // len(BIG)  # as many as fit: the first two


@pytest.mark.parametrize("whole", [True, False])
def test_an_escaped_copy_is_sent_in_one_send_where_the_server_keeps_sends(whole: bool) -> None:
    """Sliced, a copy cost a pause and a resume of the response per slice: 12% of the CPU of
    a 1.4 MB response and 0.4 ms of its latency. A server that copies what waits to be sent
    (asyncio's loop, h11: no WHOLE_SENDS extension) still gets slices, so a slow client never
    makes it hold the whole copy twice."""
    huge = BIG * (streamed.WHOLE_MAX // len(BIG) + 1)
    document = {"data": [{"b64_json": BIG}, {"b64_json": huge}]}
    pieces = streamed.split(document)
    assert pieces is not None
    sent: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "extensions": {streamed.WHOLE_SENDS: {}} if whole else {}}
    asyncio.run(streamed.PiecesResponse(pieces)(scope, receive, send))
    bodies = [m["body"] for m in sent if m["type"] == "http.response.body"]
    assert b"".join(bytes(body) for body in bodies) == orjson.dumps(document)
    assert [len(body) for body in bodies if len(body) == len(BIG)] == ([len(BIG)] if whole else [])
    assert max(len(body) for body in bodies if len(body) != len(BIG)) <= streamed.SLICE


def test_a_small_document_is_not_split() -> None:
    assert streamed.split({"data": [{"b64_json": "abc" * 1000}]}) is None


def test_a_document_holding_the_placeholder_text_still_comes_out_right() -> None:
    document = {"data": [{"b64_json": BIG, "revised_prompt": "@@switchyard-"}]}
    pieces = streamed.split(document)
    assert pieces is not None and pieces.join() == orjson.dumps(document)


def test_the_response_sends_slices_with_an_exact_length() -> None:
    document = {"data": [{"b64_json": BIG}]}
    pieces = streamed.split(document)
    assert pieces is not None
    ran: list[bool] = []

    async def after() -> None:
        ran.append(True)

    response = streamed.PiecesResponse(pieces, 200, {"X-Switchyard-Provider": "p"},
                                       BackgroundTask(after))
    response.headers.update({"x-ratelimit-limit-requests": "5"})
    assert response.body == orjson.dumps(document)  # for callers that store a copy

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await response(scope, receive, send)

    async def main() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://t") as client:
            return await client.get("/")

    got = asyncio.run(main())
    assert got.content == orjson.dumps(document) and ran == [True]
    assert got.headers["content-length"] == str(len(got.content))
    assert got.headers["content-type"] == "application/json"
    assert got.headers["x-switchyard-provider"] == "p"
    assert got.headers["x-ratelimit-limit-requests"] == "5"


@pytest.fixture
def through_switchyard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The benchmark's fake OpenAI host in its own process, and Switchyard routing to it."""
    sizes = [2_000, 700_000, 5_000_000]
    with procs.upstream(sizes, 0.0) as port:
        procs.write_routes(tmp_path / "routes", port)
        monkeypatch.setenv(procs.KEY_ENV, "sk-upstream")
        config = make_config(tmp_path / "data", routes_dir=tmp_path / "routes")
        with serve(config) as running:
            yield running.new_key("e2e"), running.v1


@pytest.mark.parametrize("chars", [2_000, 700_000, 5_000_000])
def test_an_image_comes_through_unchanged(through_switchyard: tuple[str, str],
                                          chars: int) -> None:
    key, base_url = through_switchyard
    with openai.OpenAI(base_url=base_url, api_key=key, max_retries=0) as client:
        raw = client.images.with_raw_response.generate(
            model=procs.MODEL, prompt=f"payload={chars}", size="1024x1024")
    assert raw.http_response.headers["content-length"] == str(len(raw.http_response.content))
    assert raw.parse().data[0].b64_json == real_images.image_base64(chars, "png")
    assert raw.headers["x-switchyard-provider"] == "bench"
