"""Capability filter: which routes can serve a request, and which parameter rules out the rest."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from proxy.catalog import Route
from proxy.domain import ImageRequest

Check = Callable[[Route, ImageRequest], bool]


def _param(request: ImageRequest, extension: str) -> str:
    return "size" if request.geometry.source in ("size", "default") else extension


def _reference_param(request: ImageRequest) -> str:
    return "image" if request.kind == "edit" else "image_urls"


# Ordered: a request that several checks rule out is reported against the first.
CHECKS: tuple[tuple[Check, Callable[[ImageRequest], str]], ...] = (
    (lambda r, q: q.geometry.tier in r.capabilities.tiers, lambda q: _param(q, "resolution")),
    (lambda r, q: q.geometry.aspect_ratio in r.capabilities.aspect_ratios,
     lambda q: _param(q, "aspect_ratio")),
    (lambda r, q: q.background in r.capabilities.backgrounds, lambda q: "background"),
    (lambda r, q: q.quality in r.capabilities.qualities, lambda q: "quality"),
    (lambda r, q: q.kind != "edit" or r.capabilities.edits, lambda q: "image"),
    (lambda r, q: len(q.images) <= r.capabilities.max_reference_images, _reference_param),
    (lambda r, q: q.n <= r.capabilities.max_n, lambda q: "n"),
)


def fits(route: Route, request: ImageRequest) -> bool:
    return all(check(route, request) for check, _ in CHECKS)


def unservable_param(routes: Sequence[Route], request: ImageRequest) -> str:
    """The parameter to blame when no route fits: the first check no route passes, else the
    first check the closest route fails."""
    for check, param in CHECKS:
        if not any(check(route, request) for route in routes):
            return param(request)
    for check, param in CHECKS:
        if not check(routes[0], request):
            return param(request)
    return "model"
