"""The Batch API's request checks: an upload's form and file, and a batch's create body, each
field as OpenAI's spec types it (CreateFileRequest, CreateBatchRequest, Metadata).

Nothing is ignored: an unknown field, or an expiry policy we would not honour, is a 400 naming
it rather than a setting the client believes took effect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from starlette.datastructures import UploadFile
from starlette.requests import Request

from proxy.api import inputs
from proxy.api.errors import bad_request
from proxy.billing.batches import MAX_REQUESTS, WINDOW_S

ENDPOINTS = ("/v1/images/generations", "/v1/images/edits")
MAX_METADATA = 16  # pairs; keys up to 64 characters, values up to 512 (OpenAI's Metadata)
_EXPIRY_SECONDS = (3600, 2_592_000)
_BATCH_FIELDS = frozenset({"input_file_id", "endpoint", "completion_window", "metadata",
                           "output_expires_after"})


@dataclass(frozen=True, slots=True)
class Upload:
    filename: str
    content: bytes


@dataclass(frozen=True, slots=True)
class BatchAsk:
    endpoint: str
    completion_window: str
    input_file_id: str
    metadata: dict[str, str] | None


async def upload(request: Request) -> Upload:
    """The fields of POST /v1/files: `purpose` batch, and `file` a JSONL file of requests."""
    async with request.form(max_files=1, max_fields=8) as form:  # closes the spooled upload
        expiry: dict[str, str] = {}
        for name, value in form.multi_items():
            inputs.text(name, name)
            if name.startswith("expires_after") and isinstance(value, str):
                expiry[name] = value
            elif name not in ("file", "purpose"):
                raise bad_request(name, f"unrecognized request argument supplied: {name}",
                                  code="unknown_parameter")
        purpose, file = form.get("purpose"), form.get("file")
        if purpose != "batch":
            raise bad_request("purpose", "only purpose 'batch' is served here")
        if not isinstance(file, UploadFile):
            raise bad_request("file", "'file' is required: a JSONL file of requests",
                              code="missing_required_parameter")
        if expiry:
            _refuse_expiry(_form_expiry(expiry), "expires_after")
        filename = inputs.text(file.filename or "batch.jsonl", "file")
        content = await file.read()
    check_jsonl(content)
    return Upload(filename, content)


def check_jsonl(content: bytes) -> None:
    """JSONL: UTF-8 text, at least one line a JSON object, at most MAX_REQUESTS lines. A line
    that is not a valid request is the batch's business (its error file), not the upload's."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request("file", "'file' must be a JSONL file (UTF-8 text, one JSON request "
                                  "per line)", code="invalid_file_format") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) > MAX_REQUESTS:
        raise bad_request("file", f"a batch input file holds at most {MAX_REQUESTS} requests")
    if not any(_is_object(line) for line in lines):
        raise bad_request("file", "'file' must be a JSONL file: no line of it is a JSON "
                                  "object", code="invalid_file_format")


def _is_object(line: str) -> bool:
    try:
        return isinstance(orjson.loads(line), dict)
    except orjson.JSONDecodeError:
        return False


def batch_ask(data: dict[str, Any]) -> BatchAsk:
    """POST /v1/batches' body (already free of NUL characters: inputs.json_object)."""
    for name in data:
        if name not in _BATCH_FIELDS:
            raise bad_request(name, f"unrecognized request argument supplied: {name}",
                              code="unknown_parameter")
    endpoint, window = data.get("endpoint"), data.get("completion_window")
    if not isinstance(endpoint, str) or endpoint not in ENDPOINTS:
        raise bad_request("endpoint", f"'endpoint' must be one of {', '.join(ENDPOINTS)}")
    if not isinstance(window, str) or window not in WINDOW_S:
        raise bad_request("completion_window", "'completion_window' must be '24h'")
    file_id = data.get("input_file_id")
    if not isinstance(file_id, str) or not file_id:
        raise bad_request("input_file_id", "'input_file_id' is required: the id of a file "
                                           "uploaded with purpose 'batch'",
                          code="missing_required_parameter")
    if data.get("output_expires_after") is not None:
        _refuse_expiry(data["output_expires_after"], "output_expires_after")
    return BatchAsk(endpoint, window, file_id, metadata(data.get("metadata")))


def metadata(value: Any) -> dict[str, str] | None:
    """OpenAI's Metadata: null, or at most 16 string pairs (keys to 64 characters, values to
    512)."""
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > MAX_METADATA:
        raise bad_request("metadata", f"'metadata' must be an object of at most {MAX_METADATA} "
                                      "string keys and values")
    for name, item in value.items():
        if len(name) > 64:
            raise bad_request("metadata", "'metadata' keys are at most 64 characters")
        if not isinstance(item, str) or len(item) > 512:
            raise bad_request(f"metadata.{name}", f"'metadata.{name}' must be a string of at "
                                                  "most 512 characters")
    return dict(value)


def _form_expiry(fields: dict[str, str]) -> Any:
    """expires_after as a form sends it: `expires_after[anchor]` and `expires_after[seconds]`
    (the SDKs), or one field holding its JSON."""
    if list(fields) == ["expires_after"]:
        try:
            return orjson.loads(fields["expires_after"])
        except orjson.JSONDecodeError:
            raise bad_request("expires_after", "'expires_after' must be an object") from None
    parts: dict[str, Any] = {}
    for name, value in fields.items():
        part = name.removeprefix("expires_after")
        if part not in ("[anchor]", "[seconds]"):
            raise bad_request(name, f"unrecognized request argument supplied: {name}",
                              code="unknown_parameter")
        number = inputs.integer_text(value) if part == "[seconds]" else None
        parts[part[1:-1]] = value if number is None else number
    return parts


def _refuse_expiry(value: Any, param: str) -> None:
    """Check an expiry policy as OpenAI types it, then refuse it: files here are kept, not
    expired, and a policy we would not honour must not look accepted."""
    if not isinstance(value, dict) or set(value) - {"anchor", "seconds"}:
        raise bad_request(param, f"'{param}' must be an object with 'anchor' and 'seconds'")
    if value.get("anchor") != "created_at":
        raise bad_request(f"{param}.anchor", f"'{param}.anchor' must be 'created_at'")
    seconds = value.get("seconds")
    low, high = _EXPIRY_SECONDS
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not low <= seconds <= high:
        raise bad_request(f"{param}.seconds", f"'{param}.seconds' must be an integer from "
                                              f"{low} to {high}")
    raise bad_request(param, f"'{param}' is not supported: Switchyard does not expire files; "
                             "omit it", code="unsupported_value")
