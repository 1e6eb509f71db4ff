"""Per-request context as plain ASGI middleware: a request id on every response, and a cap on
body size enforced while the body streams in (a lying Content-Length cannot get past it)."""

from __future__ import annotations

import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proxy.api.errors import INTERNAL, ApiError, log, render


class RequestContext:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = "req_" + secrets.token_hex(12)
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
            await render(self._too_large())(scope, receive, send_with_id)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send_with_id(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except Exception as exc:
            # Log the type only (values may hold secrets); never a traceback to client or log.
            log.error("unhandled %s on %s %s (request %s)", type(exc).__name__,
                      scope.get("method"), scope.get("path"), request_id)
            if not started:
                await render(INTERNAL)(scope, receive, send_with_id)

    def _too_large(self) -> ApiError:
        return ApiError(413, f"request body is larger than the limit of {self.max_body_bytes} "
                             "bytes", code="request_too_large")
