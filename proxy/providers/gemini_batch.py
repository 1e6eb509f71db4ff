"""The `gemini_batch` protocol: an image request as a Gemini Batch API job, at half the price.

One flow submits one batch holding one inline GenerateContentRequest per image (gemini.py builds
them), polls it until it ends, and reads its inlined responses, matched back by their keys, with
gemini.py's rules. A request with a ticket first looks for the batch it already created (by its
display name): a job re-claimed after a crash resumes polling instead of paying twice.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import orjson

from proxy.catalog import Route
from proxy.domain import ImageRequest, ImageResult, Usage
from proxy.failures import Failure, Kind, UpstreamError
from proxy.providers import gemini
from proxy.providers.base import (
    Adapter,
    Flow,
    Grouping,
    Step,
    Steps,
    UpstreamCall,
    UpstreamReply,
    check,
)
from proxy.providers.results import safe_text
from proxy.providers.upstream import Pacing, pauses

PREFIX = "switchyard-"  # displayName = PREFIX + ticket: how a resumed job finds its batch
POLL_S = 30.0
# Google expires a batch that has not run within 48 h [U]; without a patience, wait that long.
MAX_WAIT_S = 48 * 3600.0
LOOKUP_PAGE_SIZE = 100
LOOKUP_PAGES = 5
# States by suffix: the Developer API says BATCH_STATE_*, python-genai and Vertex JOB_STATE_*.
SUCCEEDED = frozenset({"SUCCEEDED", "PARTIALLY_SUCCEEDED"})
GIVEN_UP = frozenset({"FAILED", "CANCELLED", "EXPIRED"})
TERMINAL = SUCCEEDED | GIVEN_UP
_NAME = re.compile(r"^batches/[A-Za-z0-9_-]+$")
# google.rpc.Code -> (HTTP status, status name) as Google maps them: a Status inside a batch
# carries only the numeric code, and is classified as the same error over HTTP would be.
RPC_CODES: Mapping[int, tuple[int, str]] = {
    3: (400, "INVALID_ARGUMENT"), 4: (504, "DEADLINE_EXCEEDED"), 5: (404, "NOT_FOUND"),
    7: (403, "PERMISSION_DENIED"), 8: (429, "RESOURCE_EXHAUSTED"),
    9: (400, "FAILED_PRECONDITION"), 13: (500, "INTERNAL"), 14: (503, "UNAVAILABLE"),
    16: (401, "UNAUTHENTICATED"),
}

Wait = Generator[Step, UpstreamReply | None, dict[str, Any]]
Lookup = Generator[Step, UpstreamReply | None, dict[str, Any] | None]


@dataclass(frozen=True, slots=True)
class Options:
    """Route data: `poll_s` between polls, `resume_lookup` (look for the ticket's batch before
    submitting), `lookup_pages` of the batch list to search, `max_wait_s` without a patience."""

    pacing: Pacing
    resume_lookup: bool = True
    lookup_pages: int = LOOKUP_PAGES

    @classmethod
    def of(cls, request: ImageRequest, route: Route) -> Options:
        given = {**route.provider.options, **route.options}
        poll = float(given.get("poll_s", POLL_S))
        # A patient request waits its patience less one poll: the flow, not the driver's
        # deadline (the same patience), ends the wait, so it can cancel the batch it gives up.
        wait = max(0.0, request.patience_s - poll) if request.patience_s is not None \
            else float(given.get("max_wait_s", MAX_WAIT_S))
        return cls(Pacing(poll_interval_s=poll, poll_interval_max_s=poll, poll_backoff=1.0,
                          max_wait_s=wait),
                   resume_lookup=given.get("resume_lookup", True) is not False,
                   lookup_pages=int(given.get("lookup_pages", LOOKUP_PAGES)))


def validate(options: Mapping[str, Any]) -> list[str]:
    """Problems in a route's batch options, found when the catalog loads."""
    problems = [f"options.{name}: must be a positive number"
                for name in ("poll_s", "max_wait_s", "gather_s")
                if name in options and not _positive(options[name])]
    if "resume_lookup" in options and not isinstance(options["resume_lookup"], bool):
        problems.append("options.resume_lookup: must be true or false")
    pages = options.get("lookup_pages", 1)
    if isinstance(pages, bool) or not isinstance(pages, int) or pages < 1:
        problems.append("options.lookup_pages: must be a whole number of at least 1")
    return problems


def _positive(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and value > 0


def item_keys(base: str, n: int) -> tuple[str, ...]:
    """The metadata key of each inline request: the ticket itself for one image."""
    return (base,) if n == 1 else tuple(f"{base}-{i + 1}" for i in range(n))


def build(request: ImageRequest, route: Route, key: str, name: str,
          keys: tuple[str, ...]) -> UpstreamCall:
    """The batchGenerateContent call: one inline request per image, each under its key."""
    inline = gemini.body(request, route)
    batch = {"displayName": name, "inputConfig": {"requests": {"requests": [
        {"request": inline, "metadata": {"key": item}} for item in keys]}}}
    model = quote(route.upstream_model, safe="")
    return UpstreamCall("POST", f"{route.provider.base_url}/models/{model}:batchGenerateContent",
                        headers=_auth(key), json={"batch": batch})


def _auth(key: str) -> dict[str, str]:
    # Every call goes to base_url: the key never follows a URL a reply names.
    return {"x-goog-api-key": key}


def state(operation: Mapping[str, Any]) -> str:
    """The batch's state without its prefix; `done: true` with no end state still ends it."""
    meta = operation.get("metadata")
    raw = (meta.get("state") if isinstance(meta, dict) else None) or operation.get("state")
    short = str(raw or "UNSPECIFIED").removeprefix("BATCH_STATE_").removeprefix("JOB_STATE_")
    if operation.get("done") is True and short not in TERMINAL:
        return "FAILED" if operation.get("error") else "SUCCEEDED"
    return short


def batch_name(operation: Mapping[str, Any]) -> str:
    """`batches/{id}`, checked: it becomes part of the poll URL."""
    meta = operation.get("metadata")
    name = operation.get("name") or (meta.get("name") if isinstance(meta, dict) else None)
    if not isinstance(name, str) or not _NAME.match(name):
        raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, "Gemini returned no usable batch name"))
    return name


def _display_name(operation: Mapping[str, Any]) -> Any:
    meta = operation.get("metadata")
    return (meta.get("displayName") if isinstance(meta, dict) else None) \
        or operation.get("displayName")


def _object(reply: UpstreamReply, what: str) -> dict[str, Any]:
    body = reply.json()
    if not isinstance(body, dict):
        raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, f"Gemini returned a malformed {what}",
                                    None, reply.status))
    return body


def get(name: str, route: Route, key: str) -> Wait:
    url = f"{route.provider.base_url}/{name}"
    reply = check((yield UpstreamCall("GET", url, _auth(key), kind="poll")), gemini.classify)
    return _object(reply, "batch")


def lookup(route: Route, key: str, display_name: str, options: Options) -> Lookup:
    """The batch already created under this display name, unless it can no longer deliver.
    [U] the list reply's shape, {"operations": [Operation], "nextPageToken": "…"}, and its
    order are unverified; only the first `lookup_pages` pages are searched."""
    token = ""
    for _ in range(options.lookup_pages):
        query = {"pageSize": LOOKUP_PAGE_SIZE, **({"pageToken": token} if token else {})}
        url = f"{route.provider.base_url}/batches?{urlencode(query)}"
        reply = check((yield UpstreamCall("GET", url, _auth(key), kind="poll")), gemini.classify)
        page = _object(reply, "batch list")
        for operation in page.get("operations") or ():
            if isinstance(operation, dict) and _display_name(operation) == display_name \
                    and state(operation) not in GIVEN_UP:
                return operation
        token = str(page.get("nextPageToken") or "")
        if not token:
            break
    return None


def wait_done(operation: dict[str, Any], route: Route, key: str, options: Options) -> Wait:
    """Poll until the batch ends. Past the patience (or max wait), cancel it before giving up:
    a batch nobody waits for any more must not run and bill."""
    name = batch_name(operation)
    waits = pauses(options.pacing, "Gemini batch unfinished")
    try:
        while state(operation) not in TERMINAL:
            yield next(waits)
            operation = yield from get(name, route, key)
    except UpstreamError as exc:
        if exc.failure.kind is Kind.TIMEOUT and state(operation) not in TERMINAL:
            url = f"{route.provider.base_url}/{name}:cancel"
            yield UpstreamCall("POST", url, _auth(key), kind="cancel")
        raise
    return operation


def status_failure(error: Mapping[str, Any]) -> Failure:
    """A google.rpc.Status from inside a batch, classified by gemini.py's rules for the same
    status over HTTP. Its `code` is the gRPC code [U: an HTTP code (>= 100) is taken as is]."""
    code = error.get("code")
    code = code if isinstance(code, int) and not isinstance(code, bool) else 2
    http, status = (code, "") if code >= 100 else RPC_CODES.get(code, (500, ""))
    return gemini.rpc_failure(http, {"status": status, **error}, httpx.Headers())


def batch_failure(operation: Mapping[str, Any], ended: str) -> Failure:
    """Why a batch that did not succeed delivered nothing."""
    if ended == "EXPIRED":
        return Failure(Kind.TIMEOUT, "Gemini batch expired before it ran")
    if ended == "CANCELLED":
        return Failure(Kind.UPSTREAM_BROKEN, "Gemini batch was cancelled")
    meta = operation.get("metadata")
    error = operation.get("error") or (meta.get("error") if isinstance(meta, dict) else None)
    error = error if isinstance(error, dict) else {}
    kind = status_failure(error).kind if error.get("code") else Kind.UPSTREAM_BROKEN
    # No upstream words on an auth failure (as gemini.classify): they may quote the key.
    text = "credentials refused" if kind is Kind.AUTH \
        else safe_text(error.get("message") or "no reason given")
    return Failure(kind, f"Gemini batch failed: {text}")


def inlined(operation: Mapping[str, Any]) -> dict[str, Any]:
    """The inlined responses by their metadata key (a response without one matches nothing)."""
    meta = operation.get("metadata")
    output = (meta.get("output") if isinstance(meta, dict) else None) \
        or operation.get("response") or {}
    items = (output.get("inlinedResponses") or {}).get("inlinedResponses") or ()
    return {str(item["metadata"].get("key")): item for item in items
            if isinstance(item, dict) and isinstance(item.get("metadata"), dict)}


def answer(item: Any) -> ImageResult:
    """One inlined response: a GenerateContentResponse read as the sync protocol reads it, or
    the Status error it holds instead."""
    if not isinstance(item, dict):
        raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN,
                                    "Gemini batch returned no response for a request"))
    if isinstance(item.get("error"), dict):
        raise UpstreamError(status_failure(item["error"]))
    return gemini.parse(item.get("response"))


def outcome(operation: Mapping[str, Any], keys: tuple[str, ...]) -> ImageResult:
    """The images of an ended batch; some requests failing still delivers the others (billed
    as delivered), all failing raises the first one's failure."""
    ended = state(operation)
    if ended not in SUCCEEDED:
        raise UpstreamError(batch_failure(operation, ended))
    answers = inlined(operation)
    results: list[ImageResult] = []
    errors: list[UpstreamError] = []
    for key in keys:
        try:
            results.append(answer(answers.get(key)))
        except UpstreamError as exc:
            errors.append(exc)
    if not results:
        raise errors[0]
    return ImageResult(images=tuple(i for r in results for i in r.images), size=results[0].size,
                       upstream_id=batch_name(operation),
                       usage=Usage.total(r.usage for r in results))


def flow(request: ImageRequest, route: Route) -> Flow:
    """Find this ticket's batch or submit one, wait for it to end, read its responses."""
    key = gemini.api_key(route)
    options = Options.of(request, route)
    base = request.ticket or secrets.token_urlsafe(12)
    keys = item_keys(base, request.n)
    submit = build(request, route, key, PREFIX + base, keys)  # refusals come before any call
    found = None
    if request.ticket and options.resume_lookup:
        found = yield from lookup(route, key, PREFIX + base, options)
    if found is None:
        operation = _object(check((yield submit), gemini.classify), "batch")
    else:
        # The list leaves inlined responses out: read the batch itself.
        operation = yield from get(batch_name(found), route, key)
    operation = yield from wait_done(operation, route, key, options)
    return outcome(operation, keys)


# --- Many requests in one batch (proxy/providers/grouping.py gathers them) -------------------


def group_part(ticket: str, request: ImageRequest, route: Route) -> tuple[Any, int]:
    """A member's inline requests (one per image, keyed by its ticket) and their size."""
    inline = gemini.body(request, route)
    part = [{"request": inline, "metadata": {"key": item}}
            for item in item_keys(ticket, request.n)]
    return part, len(orjson.dumps(part))


def group_submit(parts: Sequence[Any], label: str, route: Route) -> Steps:
    """One batch holding every member's inline requests, displayed as `label`; its name."""
    key = gemini.api_key(route)
    batch = {"displayName": label, "inputConfig": {"requests": {
        "requests": [entry for part in parts for entry in part]}}}
    model = quote(route.upstream_model, safe="")
    call = UpstreamCall("POST", f"{route.provider.base_url}/models/{model}:batchGenerateContent",
                        headers=_auth(key), json={"batch": batch})
    return batch_name(_object(check((yield call), gemini.classify), "batch"))


def group_find(label: str, request: ImageRequest, route: Route) -> Steps:
    """The name of the batch displayed as `label` (its sender died before it learnt it), or
    None: Google lists none that can still deliver, or the route's resume_lookup is off."""
    options = Options.of(request, route)
    if not options.resume_lookup:
        return None
    found = yield from lookup(route, gemini.api_key(route), label, options)
    return batch_name(found) if found is not None else None


def group_wait(name: str, request: ImageRequest, route: Route) -> Steps:
    """Poll the named batch until it ends (cancelling it past the patience)."""
    key = gemini.api_key(route)
    operation = yield from get(name, route, key)
    return (yield from wait_done(operation, route, key, Options.of(request, route)))


def group_answer(ended: Any, ticket: str, request: ImageRequest) -> ImageResult:
    return outcome(ended, item_keys(ticket, request.n))


# One batch carries every image of a request (n inline requests under one ticket), so parallel
# flows never share, or find, each other's batch. With a Groups pool (the server has one), many
# requests share a batch: the grouping below.
ADAPTER = Adapter("gemini_batch", flow, validate=validate,
                  grouping=Grouping(group_part, group_submit, group_find, group_wait,
                                    group_answer, max_members=500,
                                    max_bytes=16 * 1024 * 1024))
