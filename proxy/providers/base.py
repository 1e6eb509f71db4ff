"""The adapter contract: a wire protocol as a few pure functions and one value.

An adapter knows one protocol and nothing of routing, billing, config or serving. flows.py is
the only code that performs the I/O these functions describe.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from proxy.catalog import Provider, Route
from proxy.domain import ImageRequest, ImageResult
from proxy.failures import Failure


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """One HTTP request to send: the adapter's translation of an ImageRequest."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    json: Any = None
    content: bytes | None = None


@dataclass(frozen=True, slots=True)
class UpstreamReply:
    """One HTTP response as received; `json()` decodes the body with orjson once."""

    status: int
    headers: httpx.Headers
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


@dataclass(frozen=True, slots=True)
class Adapter:
    """A wire protocol. `classify` returns None when the reply is a success to `parse`."""

    protocol: str
    build: Callable[[ImageRequest, Route], UpstreamCall]
    parse: Callable[[UpstreamReply, ImageRequest], ImageResult]
    classify: Callable[[UpstreamReply], Failure | None]
    # Set only by in-process upstreams (the simulated demo): the transport that answers calls.
    transport: Callable[[Provider, float], httpx.AsyncBaseTransport] | None = None
