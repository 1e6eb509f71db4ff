"""Per-request context as plain ASGI middleware: a request id on every response, and a cap on
body size enforced while the body streams in (a lying Content-Length cannot get past it).

The image endpoints (`direct`) are called from here without Starlette's exception middleware,
router and endpoint wrapper: those layers, and two more send wrappers, cost an image request
more than its routing does. Their errors are rendered exactly as the exception handlers do."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy import ids
from proxy.api.errors import ApiError, internal, log, on_http_exception, render, render_for
from proxy.billing.db import DatabaseUnavailable

Endpoint = Callable[[Request], Awaitable[Response]]


class RequestContext:
    def __init__(self, app: ASGIApp, max_body_bytes: int,
                 direct: Mapping[tuple[str, str], Endpoint] | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.direct = dict(direct or {})  # (method, path) -> endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ids.ordered("req_")
        scope.setdefault("state", {})["request_id"] = request_id
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise self._too_large()
            return message

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await render_for(scope, self._too_large())(scope, receive, send_with_id)
            return
        endpoint = self.direct.get((scope["method"], scope["path"]))
        if endpoint is not None:
            await self._direct(endpoint, scope, limited_receive, send, request_id)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send_with_id(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except ClientDisconnect:
            return  # the client left (or was cut off) before its body was in: no one to answer
        except Exception as exc:
            _unhandled(exc, scope, request_id)
            if not started:
                await render_for(scope, internal(exc))(scope, receive, send_with_id)

    async def _direct(self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send,
                      request_id: str) -> None:
        request = Request(scope, receive)
        try:
            response = await endpoint(request)
        except ClientDisconnect:
            return  # as above
        except ApiError as exc:
            response = render(exc)
        except HTTPException as exc:
            response = await on_http_exception(request, exc)
        except Exception as exc:
            _unhandled(exc, scope, request_id)
            response = render(internal(exc))
        response.raw_headers.append((b"x-request-id", request_id.encode()))
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await response(scope, receive, tracking_send)
        except ApiError as exc:  # an event stream's refusal, raised before its first byte
            error = render(exc)
            error.raw_headers.append((b"x-request-id", request_id.encode()))
            await error(scope, receive, send)
        except Exception as exc:
            _unhandled(exc, scope, request_id)
            if not started:  # an event stream's run that failed before its first byte
                error = render(internal(exc))
                error.raw_headers.append((b"x-request-id", request_id.encode()))
                await error(scope, receive, send)

    def _too_large(self) -> ApiError:
        return ApiError(413, f"request body is larger than the limit of {self.max_body_bytes} "
                             "bytes", code="request_too_large")


def _unhandled(exc: Exception, scope: Scope, request_id: str) -> None:
    # The type only (values may hold secrets); never a traceback to client or log. A database
    # away is the 503 it should be, and the database's own log says so once per change
    # (proxy/billing/postgres.py), not once per request it refuses.
    level = logging.DEBUG if isinstance(exc, DatabaseUnavailable) else logging.ERROR
    log.log(level, "unhandled %s on %s %s (request %s)", type(exc).__name__,
            scope.get("method"), scope.get("path"), request_id)
