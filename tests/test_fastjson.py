"""fastjson.loads gives exactly what orjson.loads gives, fast path or fallback, for any reply
orjson accepts."""

from __future__ import annotations

import base64

import orjson
import pytest

from proxy.upstream import fastjson

BIG = base64.b64encode(bytes(range(256)) * 400).decode()  # ~136 KB of base64


def body(*items: str, extra: bytes = b"") -> bytes:
    data = ",".join(f'{{"b64_json": "{b}", "revised_prompt": "a \\"b64_json\\" fox"}}'
                    for b in items)
    return b'{"created": 1, "data": [' + data.encode() + b"]" + extra + b"}"


@pytest.mark.parametrize("raw", [
    body(BIG),
    body(BIG, BIG[::-1], "", BIG),
    body(BIG, extra=b', "usage": {"b64_json": 3}'),  # a non-string b64_json: fallback
    body(BIG).replace(b'"b64_json": "', b'"b64_json" :\n "'),  # spacing
    body(BIG[:10] + "\\u0041" + BIG[10:]),  # an escape inside: fallback
    body("é" + BIG),  # not ASCII: fallback
    b'{"b64_json": "abc"}',  # small: plain path
    b'[{"b64_json": "' + BIG.encode() + b'"}, {"nested": {"b64_json": ""}}]',
])
def test_same_as_orjson(raw: bytes) -> None:
    assert fastjson.loads(raw) == orjson.loads(raw)


def test_raw_control_characters_in_a_cut_string_are_taken_as_they_are() -> None:
    """orjson refuses them; the fast path does not look for them (see the module's doc)."""
    raw = body(BIG + "\x01" + BIG)
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw)
    assert fastjson.loads(raw)["data"][0]["b64_json"] == BIG + "\x01" + BIG


def test_malformed_json_still_raises() -> None:
    with pytest.raises(orjson.JSONDecodeError):
        fastjson.loads(body(BIG)[:-1])


def test_the_fast_path_skips_the_base64_scan() -> None:
    """Not a timing assertion: checks the cut-out path is the one taken for a big reply."""
    raw = body(BIG * 40)
    spans = fastjson._string_spans(raw)
    assert len(spans) == 1 and spans[0][1] - spans[0][0] == len(BIG) * 40
