"""What the submit-and-poll protocols read back: JSON bodies, upstream text fit for a client,
and result images given as data URIs or as files to download now."""

from __future__ import annotations

import base64
import re
from collections.abc import Generator, Mapping
from typing import Any

from proxy import imaging
from proxy.domain import Image
from proxy.failures import Failure, Kind, UpstreamError
from proxy.providers.base import Step, UpstreamCall, UpstreamReply, check

_URL = re.compile(r"https?://\S+")

Fetch = Generator[Step, UpstreamReply | None, Image]


def json_or_none(reply: UpstreamReply) -> Any:
    """The reply's JSON, or None for a body that is not JSON (an error page is still classified)."""
    try:
        return reply.json()
    except ValueError:
        return None


def safe_text(value: object, limit: int = 300) -> str:
    """Upstream text fit for a client: no URLs (they may carry tokens), one line, bounded."""
    text = " ".join(_URL.sub("<url>", str(value)).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def from_data_uri(uri: str) -> Image:
    """A base64 data URI's text, passed on untouched; its mime from the URI's header."""
    header, _, data = uri.partition(",")
    mime = header[5:].split(";")[0].strip().lower()
    if not header.endswith(";base64") or not mime.startswith("image/") or not data:
        raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, "upstream returned a data URI that "
                                                          "is not a base64 image"))
    return Image(mime="image/jpeg" if mime == "image/jpg" else mime, b64=data)


def classify_download(reply: UpstreamReply) -> Failure | None:
    """A result file that cannot be had (expired, gone) is the upstream's breakage."""
    if reply.status == 200:
        return None
    return Failure(Kind.UPSTREAM_BROKEN, f"could not download the result image "
                                         f"(HTTP {reply.status})", None, reply.status)


def from_download(reply: UpstreamReply) -> Image:
    """A fetched result file as an Image: mime from its magic bytes, else its content-type."""
    kind = imaging.sniff(reply.body)
    declared = reply.headers.get("content-type", "").split(";")[0].strip().lower()
    mime = f"image/{kind}" if kind else declared
    if not mime.startswith("image/") or not reply.body:
        raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, "result file is not an image"))
    return Image(mime=mime, b64=base64.b64encode(reply.body).decode("ascii"))


def download(url: str, headers: Mapping[str, str] | None = None) -> Fetch:
    """A result file fetched now (hosts keep them an hour or so); the driver checks the host."""
    reply = check((yield UpstreamCall("GET", url, headers or {}, kind="fetch")),
                  classify_download)
    return from_download(reply)


def result_image(item: str, headers: Mapping[str, str] | None = None) -> Fetch:
    """A result given as a data URI (taken as is) or as a URL (downloaded now)."""
    if item.startswith("data:"):
        return from_data_uri(item)
    return (yield from download(item, headers))
