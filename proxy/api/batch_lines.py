"""A batch input file's lines checked as requests: in the server's worker process
(proxy/offload.py), so the checking's seconds of pure Python never hold the GIL of the process
that serves other requests.

`check` runs there and sends back only what the batch needs: its valid items (pickled in
chunks, so that the server unpacks them a little at a time, on a thread) and its error file.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.api import inputs
from proxy.api.errors import ApiError, bad_request
from proxy.api.openai_schema import json_request
from proxy.billing.batches import MAX_REQUESTS
from proxy.billing.keys import KeyRecord
from proxy.catalog import Catalog

Item = tuple[str, bytes]  # (custom_id, the request body as JSON)
CHUNK = 500  # items per pickled chunk: unpickling one holds the GIL well under a millisecond


@dataclass(frozen=True, slots=True)
class Checked:
    """The checking's result, as the worker process sends it back."""

    chunks: tuple[bytes, ...]  # the valid items, CHUNK to a pickle
    errors: bytes  # the error file's JSONL lines
    too_many: bool  # more than MAX_REQUESTS lines: nothing was checked

    def items(self) -> list[Item]:
        """The valid items (run it on a thread: a 50,000-item batch's take ~10 ms)."""
        return [item for chunk in self.chunks for item in pickle.loads(chunk)]

    def raise_if_refused(self) -> None:
        if self.too_many:
            raise bad_request("input_file_id", f"a batch holds at most {MAX_REQUESTS} requests")


def check(content: bytes, endpoint: str, catalog: Catalog, key: KeyRecord) -> Checked:
    """Each non-blank line of `content` checked as a request to `endpoint` by `key`."""
    lines = [line for line in content.splitlines() if line.strip()]
    if len(lines) > MAX_REQUESTS:
        return Checked((), b"", too_many=True)
    kind = endpoint.rsplit("/", 1)[-1]
    items, errors = _items(lines, endpoint,
                           lambda body: json_request(catalog, key, kind, body))
    chunks = tuple(pickle.dumps(items[i:i + CHUNK]) for i in range(0, len(items), CHUNK))
    return Checked(chunks, errors, too_many=False)


def _items(lines: list[bytes], endpoint: str,
           check_body: Callable[[dict[str, Any]], object]) -> tuple[list[Item], bytes]:
    """Valid (custom_id, body JSON) items, and JSONL error lines for the rest."""
    items: list[Item] = []
    errors: list[bytes] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        custom_id, problem = _check_line(line, endpoint, check_body, seen)
        if problem is None:
            items.append((custom_id or "", orjson.dumps(orjson.loads(line)["body"])))
        else:
            errors.append(orjson.dumps({
                "id": f"batch_req_line_{number}", "custom_id": custom_id, "response": None,
                "error": {"code": "invalid_request", "message": f"line {number}: {problem}"}}))
    return items, b"\n".join(errors) + (b"\n" if errors else b"")


def _check_line(line: bytes, endpoint: str, check_body: Callable[[dict[str, Any]], object],
                seen: set[str]) -> tuple[str | None, str | None]:
    try:
        item = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None, "not valid JSON"
    if not isinstance(item, dict):
        return None, "not a JSON object"
    try:
        inputs.nul_free(item)
    except ApiError as exc:
        return None, exc.message
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return None, "'custom_id' is required"
    if custom_id in seen:
        return custom_id, f"custom_id {custom_id!r} is used twice"
    seen.add(custom_id)
    if item.get("method") != "POST" or item.get("url") != endpoint:
        return custom_id, f"each line must be a POST to {endpoint}"
    if not isinstance(item.get("body"), dict):
        return custom_id, "'body' must be an object"
    try:
        check_body(dict(item["body"]))
    except ApiError as exc:
        return custom_id, f"{exc.param or 'body'}: {exc.message}"
    return custom_id, None
