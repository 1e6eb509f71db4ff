"""What the submit-and-poll protocols send upstream, and when: the route's key, which hosts may
have it (and that no failure quotes it), the request in a model's own vocabulary, and the
pauses between polls."""

from __future__ import annotations

import base64
import dataclasses
import time
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from proxy.catalog import Route
from proxy.domain import ImageRequest, InputImage
from proxy.failures import Failure, Kind, UpstreamError
from proxy.providers.base import Flow, Sleep


def api_key(route: Route) -> str:
    """The provider's key; none configured fails the attempt as AUTH before any call."""
    if route.provider.key is None:
        raise UpstreamError(Failure(Kind.AUTH, f"no API key set for {route.provider.name}"))
    return route.provider.key.reveal()


def keyless(flow: Flow, key: str) -> Flow:
    """The flow, with the key cut out of any failure it raises: a host that quotes the key back
    in an error text must not have it reach a client or a log through this adapter."""
    try:
        return (yield from flow)
    except UpstreamError as exc:
        failure = exc.failure.without(key)
        if failure is exc.failure:
            raise
        raise UpstreamError(failure) from None


def own_host(url: str, route: Route) -> bool:
    """Credentials go only to the provider's own host, never to another host a URL names."""
    return urlsplit(url).netloc == urlsplit(route.provider.base_url).netloc


def auth_for(url: str, route: Route, header: str, value: str) -> dict[str, str]:
    """The credential header for a URL a reply named: sent only if it is the provider's host."""
    return {header: value} if own_host(url, route) else {}


def bearer(url: str, route: Route, key: str) -> dict[str, str]:
    """`Authorization: Bearer` for the provider's own host only (Replicate, WaveSpeed)."""
    return auth_for(url, route, "Authorization", f"Bearer {key}")


def data_uri(mime: str, data: bytes) -> str:
    """Uploaded bytes as a base64 data URI, the form hosts take file inputs inline."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def reference(image: InputImage, inline: bool = True, who: str = "this route",
              field: str = "image_urls") -> str:
    """A reference image as the model reads it: its URL as given, else its bytes as a data URI,
    or, when the route does not inline them, a refusal that names the client's field."""
    if image.url:
        return image.url
    if not inline:
        raise UpstreamError(Failure(Kind.BAD_REQUEST, f"{who} takes reference images as https "
                                                      f"URLs only ('{field}')"))
    return data_uri(image.mime, image.data or b"")


def mask_refused() -> UpstreamError:
    """A mask is refused, never dropped: these models cannot apply one, the prompt can say it."""
    return UpstreamError(Failure(Kind.BAD_REQUEST, "this model cannot apply a 'mask'; "
                                                   "describe the edit in the prompt instead"))


def keeps_input_shape(request: ImageRequest) -> bool:
    """An edit that asked for no size: the model is to keep its input image's shape."""
    return request.kind == "edit" and request.geometry.source == "default"


def shape_values(request: ImageRequest, resolutions: Mapping[str, str],
                 output_formats: Mapping[str, str], edit_aspect_ratio: str | None
                 ) -> dict[str, Any]:
    """Prompt, seed, aspect ratio, resolution and format, before a route renames them; an edit
    with no size asked sends `edit_aspect_ratio` (None leaves the field out)."""
    tier = request.geometry.tier
    keeps = keeps_input_shape(request)
    return {"prompt": request.prompt, "seed": request.seed,
            "aspect_ratio": edit_aspect_ratio if keeps else request.geometry.aspect_ratio,
            "resolution": resolutions.get(tier, tier),
            "output_format": output_formats.get(request.output_format)}


def renamed(values: Mapping[str, Any], fields: Mapping[str, str],
            extra: Mapping[str, Any]) -> dict[str, Any]:
    """The values under the model's field names, over the route's extra input; a field the
    route names "" and a value that is None are left out."""
    built = dict(extra)
    built.update({fields[k]: v for k, v in values.items() if fields.get(k) and v is not None})
    return built


@dataclasses.dataclass(frozen=True, slots=True)
class Pacing:
    """How a route polls (route data): the first pause, its growth and cap, the longest wait.
    The submit-and-poll protocols' Options extend it."""

    poll_interval_s: float = 1.0
    poll_interval_max_s: float = 5.0
    poll_backoff: float = 1.5
    max_wait_s: float = 300.0

    @staticmethod
    def given(options: Mapping[str, Any]) -> dict[str, float]:
        """The timings a route's options set, as floats; the rest keep the Options' defaults."""
        return {name: float(options[name]) for name in PACING if name in options}


PACING = tuple(f.name for f in dataclasses.fields(Pacing))


def pauses(pacing: Pacing, unfinished: str) -> Iterator[Sleep]:
    """The pauses between polls, each `poll_backoff` times the last up to the cap; a pause that
    would pass the route's max wait raises TIMEOUT instead: "{unfinished} after N s"."""
    started = time.monotonic()
    interval = pacing.poll_interval_s
    while True:
        if time.monotonic() - started + interval > pacing.max_wait_s:
            raise UpstreamError(Failure(Kind.TIMEOUT, f"{unfinished} after "
                                                      f"{pacing.max_wait_s:g} s"))
        yield Sleep(interval)
        interval = min(interval * pacing.poll_backoff, pacing.poll_interval_max_s)
