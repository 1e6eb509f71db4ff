"""Form fields as the official SDKs send nested values in a multipart request.

The openai SDK flattens `extra_body={"route": {"strategy": "fastest"}}` of a multipart edit
into the field `route[strategy]=fastest`, a list into repeated `image_urls[]` fields, and
True, 0.05 or 0 into the text "true", "0.05", "0". Here those fields are put back together
into the objects and lists the JSON body would have held, so an edit takes Switchyard's
extensions the way a generation does. A field given both whole (JSON text, which the API also
takes) and in pieces is refused, naming it.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from proxy.api.errors import bad_request

_NESTED = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[[A-Za-z0-9_]*\])+)")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_SCALARS = {"true": True, "false": False}
MAX_DEPTH = 2  # route[only][]: deeper is no field of ours


def nested(items: list[tuple[str, str]]) -> dict[str, Any]:
    """The form's text fields (in order, repeats kept) with each `a[b]` / `a[]` field folded
    into `a`; bad_request names a field that cannot be folded."""
    fields: dict[str, Any] = {}
    pieces: set[str] = set()
    for name, value in items:
        found = _NESTED.fullmatch(name)
        if found is None:
            if name in pieces:
                raise _twice(name)
            fields[name] = value
            continue
        top, path = found.group(1), re.findall(r"\[([A-Za-z0-9_]*)\]", found.group(2))
        if len(path) > MAX_DEPTH:
            raise bad_request(name, f"'{name}' is nested deeper than any field of this API")
        if top in fields and top not in pieces:
            raise _twice(top)
        pieces.add(top)
        fields[top] = _put(fields.get(top), path, _scalar(value), name)
    return fields


def _put(node: Any, path: list[str], value: Any, name: str) -> Any:
    """`node` (None: not there yet) with `value` put at `path` ('' appends to a list)."""
    if not path:
        if node is not None:
            raise bad_request(name, f"'{name}' is given twice")
        return value
    step, rest = path[0], path[1:]
    if step == "":
        node = [] if node is None else node
        if not isinstance(node, list):
            raise bad_request(name, f"'{name}' mixes a list with an object")
        if rest:
            raise bad_request(name, f"'{name}': a list holds plain values here")
        node.append(value)
        return node
    node = {} if node is None else node
    if not isinstance(node, dict):
        raise bad_request(name, f"'{name}' mixes a list with an object")
    node[step] = _put(node.get(step), rest, value, name)
    return node


def _scalar(text: str) -> Any:
    """The value the SDK turned into this text: a boolean or a number back as one."""
    if text in _SCALARS:
        return _SCALARS[text]
    if _NUMBER.fullmatch(text):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:  # past what a number of JSON holds: the field says so
            return text
    return text


def _twice(name: str) -> Exception:
    return bad_request(name, f"'{name}' is given both whole and in pieces "
                             f"('{name}[...]'); send one or the other")
