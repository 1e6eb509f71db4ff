"""Reading a host's image stream: server-sent events cut out of bytes as they arrive
(proxy/upstream/events.py), OpenAI's partial and completed image events translated
(proxy/providers/image_events.py), and `switchyard bench stream` printing its figures (a
smoke run: no figure is asserted, only that each is printed)."""

from __future__ import annotations

import re

import httpx
import orjson
import pytest

from proxy import cli
from proxy.bench.hostile import png_b64
from proxy.failures import Kind, UpstreamError
from proxy.providers import image_events
from proxy.providers.base import UpstreamReply
from proxy.providers.openai_images import ERROR_KINDS
from proxy.upstream.events import Decoder, ServerEvent, decode_all
from proxy.upstream.http1 import ReplyTooLarge

PNG = png_b64(8, 8, "x")


def _event(kind: str, **data: object) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + \
        b"\n\n"


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_events_come_whole_however_the_bytes_are_cut(newline: bytes) -> None:
    body = newline.join([b": keep-alive", b"", b"event: a", b'data: {"x":1}', b"",
                         b"data: 2", b"data: 3", b"", b""])
    decoder = Decoder(None)
    found = [event for at in range(len(body)) for event in decoder.feed(body[at:at + 1])]
    assert found == [ServerEvent("a", b'{"x":1}'), ServerEvent("message", b"2\n3")]
    assert decode_all(found[1].encoded()) == [found[1]]


def test_an_event_that_never_ends_is_refused() -> None:
    decoder = Decoder(1000)
    with pytest.raises(ReplyTooLarge):
        list(decoder.feed(b"data: " + b"A" * 2000))


def test_a_partial_image_event_is_relayed_and_a_completed_one_kept() -> None:
    partial = decode_all(_event("image_edit.partial_image", b64_json=PNG, partial_image_index=1,
                                size="1024x1024", quality="high", background="opaque",
                                output_format="png"))[0]
    found = image_events.partial(partial)
    assert found is not None and (found.index, found.mime, found.size) == (1, "image/png",
                                                                           "1024x1024")
    completed = decode_all(_event("image_edit.completed", b64_json=PNG))[0]
    assert image_events.partial(completed) is None
    assert image_events.partial(ServerEvent("message", b"not json")) is None


def _reply(*events: bytes) -> UpstreamReply:
    return UpstreamReply(200, httpx.Headers({"content-type": "text/event-stream",
                                             "x-request-id": "req_1"}), b"".join(events))


def test_completed_images_are_delivered_even_when_the_stream_then_failed() -> None:
    usage = {"input_tokens": 5, "output_tokens": 7, "input_tokens_details": {"image_tokens": 2}}
    result = image_events.result(_reply(
        _event("image_generation.completed", b64_json=PNG, size="1024x1024", usage=usage),
        b'event: error\ndata: {"error": {"message": "boom", "type": "server_error"}}\n\n'),
        ERROR_KINDS, "png")
    assert len(result.images) == 1 and result.size == "1024x1024"
    assert result.upstream_id == "req_1" and result.usage is not None
    assert (result.usage.input_tokens, result.usage.output_image_tokens) == (5, 7)


@pytest.mark.parametrize(("events", "kind"), [
    ((_event("image_generation.partial_image", b64_json=PNG),), Kind.UPSTREAM_BROKEN),
    ((b'event: error\ndata: {"error": {"code": "moderation_blocked", "message": "no"}}\n\n',),
     Kind.CONTENT_BLOCKED),
])
def test_a_stream_without_a_completed_image_fails(events: tuple[bytes, ...],
                                                  kind: Kind) -> None:
    with pytest.raises(UpstreamError) as caught:
        image_events.result(_reply(*events), ERROR_KINDS, "png")
    assert caught.value.failure.kind is kind


def test_bench_stream_prints_its_figures(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "stream", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "Time to first event of a relayed image stream" in out
    for label in ("upstream direct", "through Switchyard"):
        assert re.search(rf"^{label}\s+\d+\.\d\d\s+\d+\.\d\d$", out, re.MULTILINE), out
    assert re.search(r"^added by Switchyard: -?\d+\.\d\d ms .*target <= 2 ms", out,
                     re.MULTILINE), out
    assert cli.main(["bench", "stream", "--requests", "0"]) == 2
