"""Decoding image replies without scanning megabytes of base64 as JSON text.

An OpenAI-shaped reply is mostly `"b64_json": "<megabytes>"`. orjson must scan every byte of
those strings for escapes; here they are cut out of the bytes first, the small remainder is
parsed, and the strings are put back decoded straight from the body (base64 is ASCII). On
anything unexpected (an escape, non-ASCII, a count that does not add up) it is plain
orjson.loads: for any reply orjson accepts, the result is exactly what orjson would give.
One difference is left on purpose: a cut-out string holding raw control characters (invalid
JSON, which orjson refuses) is taken as it is, because looking for them costs more than the
cutting saves. Nothing breaks downstream: a response escapes them as JSON requires.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

KEY = b'"b64_json"'
# Below this the plain parse is as fast as the cutting.
MIN_BYTES = 64 * 1024
_SPACE = (b" ", b"\n", b"\r", b"\t")


def loads(body: bytes | bytearray) -> Any:
    if len(body) < MIN_BYTES or KEY not in body:
        return orjson.loads(body)
    spans = _string_spans(body)
    if not spans:
        return orjson.loads(body)
    view = memoryview(body)
    pieces, pos = [], 0
    for start, end in spans:  # keep the quotes, drop what is between them
        pieces.append(view[pos:start])
        pos = end
    pieces.append(view[pos:])
    data = orjson.loads(b"".join(pieces))
    try:
        texts = [str(view[start:end], "ascii") for start, end in spans]
    except UnicodeDecodeError:
        return orjson.loads(body)
    if _refill(data, iter(texts)) != len(texts):
        return orjson.loads(body)
    return data


def _string_spans(body: bytes | bytearray) -> list[tuple[int, int]]:
    """(start, end) of each b64_json string's characters; [] if any is not a plain string."""
    spans, pos = [], 0
    while (at := body.find(KEY, pos)) >= 0:
        i = _skip(body, at + len(KEY))
        if body[i:i + 1] != b":":
            return []
        i = _skip(body, i + 1)
        if body[i:i + 1] != b'"':
            return []
        end = body.find(b'"', i + 1)
        if end < 0 or body.find(b"\\", i + 1, end) >= 0:
            return []
        spans.append((i + 1, end))
        pos = end + 1
    return spans


def _skip(body: bytes | bytearray, i: int) -> int:
    while body[i:i + 1] in _SPACE:
        i += 1
    return i


def _refill(node: Any, texts: Iterator[str]) -> int:
    """Put the cut strings back in document order (orjson keeps it); how many went back."""
    count = 0
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "b64_json" and value == "":
                node[key] = next(texts, "")
                count += 1
            else:
                count += _refill(value, texts)
    elif isinstance(node, list):
        for value in node:
            count += _refill(value, texts)
    return count
