"""What handlers read from a request, checked at the edge: JSON object bodies, path ids, query
parameters and integers written as text. Each refusal is a 400 naming the parameter.

Strings are refused here if they hold a NUL character: PostgreSQL's text columns cannot store
one, so without this check the same input is a 400 on SQLite and a 500 on PostgreSQL, found
only by the query that happens to store it.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from starlette.requests import Request

from proxy.api.errors import bad_request

NUL = "\x00"
# ASCII digits only: "²".isdigit() is true and int() refuses it; int() takes "٣", " 5" and
# "5_0", which no client means. 18 digits keep every value inside a 64-bit column.
_INTEGER = re.compile(r"-?[0-9]{1,18}")


def text(value: str, param: str) -> str:
    """`value` if it holds no NUL character."""
    if NUL in value:
        raise bad_request(param, f"'{param}' must not contain NUL characters")
    return value


def nul_free(value: Any, param: str = "") -> None:
    """Refuse the first string or object key in a decoded JSON value that holds a NUL, naming
    it by its path ('metadata.note', 'images[0].image_url'). Iterative: JSON nests deeper
    than Python's recursion limit."""
    stack: list[tuple[Any, str]] = [(value, param)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            text(item, path or "body")
        elif isinstance(item, dict):
            for name, child in item.items():
                where = f"{path}.{name}" if path else name
                text(name, where)
                stack.append((child, where))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(item))


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A request body that must be one JSON object with no NUL in any string."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_request(None, "the request body is not valid JSON", code="invalid_json") \
            from None
    if not isinstance(data, dict):
        raise bad_request(None, "the request body must be a JSON object", code="invalid_json")
    nul_free(data)
    return data


async def json_object(request: Request) -> dict[str, Any]:
    return parse_json_object(await request.body())


def path_param(request: Request, name: str) -> str:
    """A path segment (an id, a name): no id holds a NUL, and no query may be sent one."""
    return text(request.path_params[name], name)


def query(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)
    return None if value is None else text(value, name)


def integer_text(value: str) -> int | None:
    """An integer written in ASCII digits (as in a query string or a form field), else None."""
    return int(value) if _INTEGER.fullmatch(value) else None


def query_integer(request: Request, name: str, low: int, high: int, default: int) -> int:
    value = query(request, name)
    if value is None:
        return default
    number = integer_text(value)
    if number is None or not low <= number <= high:
        raise bad_request(name, f"'{name}' must be an integer from {low} to {high}")
    return number
