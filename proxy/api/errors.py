"""Every error a client can see, in OpenAI's shape (or Google's, on the Gemini surface), with
the status the SDKs expect.

This is the one place an internal condition becomes an HTTP error; handlers raise ApiError and
the app's exception handlers render it. No traceback or secret ever reaches the body.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from proxy.billing.db import DatabaseUnavailable
from proxy.failures import Failure, Kind

log = logging.getLogger("switchyard")


class ApiError(Exception):
    """An error response: status, OpenAI error fields, and extra headers."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})


def bad_request(param: str | None, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def body(error: ApiError) -> bytes:
    """OpenAI's error body for `error`."""
    return orjson.dumps({"error": {"message": error.message, "type": error.type,
                                   "param": error.param, "code": error.code}})


def render(error: ApiError) -> Response:
    """The error as a response; the request-context middleware adds x-request-id."""
    return Response(body(error), error.status, error.headers, "application/json")


INTERNAL = ApiError(500, "internal error in Switchyard; the x-request-id header identifies it "
                         "in the server's log", type="server_error", code="internal_error")
DATABASE_RETRY_AFTER_S = 2  # a restarted database is usually back, and reconnected, by then


def internal(exc: Exception) -> ApiError:
    """What the client sees of an exception nobody handled: 503 while the billing database is
    unavailable (the request was not billed, and a retry will do), else a 500."""
    if isinstance(exc, DatabaseUnavailable):
        return ApiError(503, "Switchyard's billing database is unavailable right now, so "
                             "this request was not served or billed; retry in a few seconds",
                        type="server_error", code="database_unavailable",
                        headers={"retry-after": str(DATABASE_RETRY_AFTER_S)})
    return INTERNAL

# What the client sees when every route failed, by the class of the last failure.
_UPSTREAM: dict[Kind, tuple[int, str, str]] = {
    Kind.BAD_REQUEST: (400, "invalid_request_error", "upstream_rejected_request"),
    Kind.CONTENT_BLOCKED: (400, "image_generation_user_error", "moderation_blocked"),
    Kind.AUTH: (502, "upstream_error", "upstream_auth_failed"),
    Kind.RATE_LIMITED: (429, "upstream_error", "upstream_rate_limited"),
    Kind.OVERLOADED: (503, "upstream_error", "upstream_overloaded"),
    Kind.TIMEOUT: (504, "upstream_error", "upstream_timeout"),
    Kind.UPSTREAM_BROKEN: (502, "upstream_error", "upstream_error"),
}


def from_failure(failure: Failure, attempts: int) -> ApiError:
    status, type_, code = _UPSTREAM[failure.kind]
    tried = f" after {attempts} attempt{'s' if attempts != 1 else ''}" if attempts else ""
    headers = {}
    if failure.retry_after_s is not None:
        headers["retry-after"] = str(max(1, round(failure.retry_after_s)))
    return ApiError(status, f"{failure.message}{tried}", type=type_, code=code, headers=headers)


# The Gemini surface answers in Google's shape (google.rpc.Status): the HTTP code, the
# canonical status name Google pairs with it, and the details its clients read.
GOOGLE_METHODS = (":generateContent", ":streamGenerateContent")
_GOOGLE_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                  404: "NOT_FOUND", 405: "UNIMPLEMENTED", 409: "ABORTED",
                  429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 501: "UNIMPLEMENTED",
                  503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
_RPC = "type.googleapis.com/google.rpc."
_NEVER_GOOGLE = ("/admin/", "/v1/chat/", "/v1/images/", "/v1/files", "/v1/batches",
                 "/v1/usage", "/v1/activity", "/images/", "/callbacks/")


def is_google(scope: Scope) -> bool:
    """Whether a request is the Gemini surface's: under /v1beta, a model's method (where
    google-genai's default API version, v1, puts it), or carrying Google's style of key."""
    path = scope["path"]
    if path.startswith("/v1beta/") or path.endswith(GOOGLE_METHODS):
        return True
    # OpenAI's surfaces and our own (the admin API's /admin/usage takes a `key` query) are
    # never Google's, whatever a client sends along; GET /v1/models serves both.
    if path.startswith(_NEVER_GOOGLE):
        return False
    if any(name == b"x-goog-api-key" for name, _ in scope["headers"]):
        return True
    query = scope.get("query_string", b"")
    return bool(query) and any(name == "key" for name, _ in parse_qsl(query.decode("latin-1")))


def google_status(status: int) -> str:
    return _GOOGLE_STATUS.get(status, "INTERNAL" if status >= 500 else "INVALID_ARGUMENT")


def google_error(error: ApiError) -> dict[str, Any]:
    """`{"error": {code, message, status, details}}`: ErrorInfo carries our code as its reason,
    BadRequest names the field, RetryInfo carries a retry-after."""
    details: list[dict[str, Any]] = []
    if error.code:
        details.append({"@type": _RPC + "ErrorInfo", "reason": error.code.upper(),
                        "domain": "switchyard", "metadata": {"type": error.type}})
    if error.param:
        details.append({"@type": _RPC + "BadRequest", "fieldViolations": [
            {"field": error.param, "description": error.message}]})
    if (after := error.headers.get("retry-after")) is not None:
        details.append({"@type": _RPC + "RetryInfo", "retryDelay": f"{after}s"})
    return {"error": {"code": error.status, "message": error.message,
                      "status": google_status(error.status), "details": details}}


def render_for(scope: Scope, error: ApiError) -> Response:
    """The error in the shape of the surface the request belongs to."""
    if is_google(scope):
        return Response(orjson.dumps(google_error(error)), error.status, error.headers,
                        "application/json")
    return render(error)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    error = ApiError(exc.status_code, str(exc.detail), param=None, code=code,
                     headers=exc.headers)
    return render_for(request.scope, error)


async def on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return render_for(request.scope, exc)
