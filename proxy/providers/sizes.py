"""The size to ask an OpenAI-shaped host for: the nearest of its listed sizes (route option
`sizes`), a fit to its free-size rules (`arbitrary_sizes`), or the tier's canonical pixels;
worked out once per route and shape."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from proxy import geometry
from proxy.catalog import Route
from proxy.domain import TIER_EDGE, Geometry, ImageRequest
from proxy.providers.images_api import option, remembered

MEMO_SIZES = 256  # a route remembers the sizes chosen for exact sizes until it holds this many


@dataclass(frozen=True, slots=True)
class SizeRules:
    """Free WIDTHxHEIGHT sizes a model accepts (route option `arbitrary_sizes`)."""

    multiple: int = 16
    max_ratio: float = 3.0
    min_pixels: int = 0
    max_pixels: int = geometry.MAX_EDGE ** 2
    max_edge: int = geometry.MAX_EDGE

    def accepts(self, width: int, height: int) -> bool:
        return (width % self.multiple == 0 and height % self.multiple == 0
                and max(width, height) <= self.max_edge
                and self.min_pixels <= width * height <= self.max_pixels
                and max(width / height, height / width) <= self.max_ratio + 1e-9)

    def fit(self, ratio: float, area: float) -> tuple[int, int]:
        """The accepted size nearest to a shape: ratio and area clamped into range, then
        rounded to the multiple (down or up when plain rounding breaks a limit)."""
        ratio = min(max(ratio, 1 / self.max_ratio), self.max_ratio)
        area = min(max(area, self.min_pixels), self.max_pixels)
        width = math.sqrt(area * ratio)
        height = width / ratio
        scale = min(1.0, self.max_edge / max(width, height))
        m = self.multiple
        sides = [(max(m, step(width * scale / m) * m), max(m, step(height * scale / m) * m))
                 for step in (round, math.floor, math.ceil)]
        return next((s for s in sides if self.accepts(*s)), sides[1])


def size_rules(route: Route) -> SizeRules | None:
    spec = option(route, "arbitrary_sizes")
    if not spec:
        return None
    return SizeRules(**spec) if isinstance(spec, Mapping) else SizeRules()


def size_list(route: Route, tier: str, default: Iterable[str] = ()) -> tuple[str, ...]:
    """Accepted sizes (route option `sizes`): a list, or a table of lists by tier."""
    sizes = option(route, "sizes", None)
    if isinstance(sizes, Mapping):
        sizes = sizes.get(tier) or [s for group in sizes.values() for s in group]
    return tuple(sizes if sizes is not None else default)


def nearest_size(ratio: float, area: float, sizes: Iterable[str]) -> tuple[int, int]:
    """The listed size closest in aspect ratio, then in pixel count (both on a log scale)."""
    def distance(size: str) -> tuple[float, float]:
        w, h = geometry.parse_size(size)
        return round(abs(math.log(w / h / ratio)), 3), abs(math.log(w * h / area))
    return geometry.parse_size(min(sizes, key=distance))


def choose_size(request: ImageRequest, route: Route, default_sizes: Iterable[str] = (),
                default_rules: SizeRules | None = None) -> tuple[int, int]:
    """The size to ask for. An exact size goes as is when the rules accept it; otherwise the
    asked shape is fitted to the rules, or the nearest listed size is taken; with neither,
    the tier's canonical pixels. The caller reports what was delivered."""
    g = request.geometry
    defaults = tuple(default_sizes)
    key = ("size", g.aspect_ratio, g.tier, g.exact_size, defaults, default_rules)
    if g.exact_size is not None and len(route.memo) >= MEMO_SIZES and key not in route.memo:
        return _choose_size(g, route, defaults, default_rules)  # exact sizes are client input
    return remembered(route, key, lambda: _choose_size(g, route, defaults, default_rules))


def _choose_size(g: Geometry, route: Route, default_sizes: Iterable[str],
                 default_rules: SizeRules | None) -> tuple[int, int]:
    if g.exact_size:
        w, h = geometry.parse_size(g.exact_size)
        ratio, area = w / h, float(w * h)
    else:
        ratio, area = geometry.ratio_value(g.aspect_ratio), float(TIER_EDGE[g.tier] ** 2)
    rules = size_rules(route)
    if rules is None and option(route, "sizes") is None:
        rules = default_rules
    if rules is not None:
        if g.exact_size and rules.accepts(w, h):
            return w, h
        return rules.fit(ratio, area)
    sizes = size_list(route, g.tier, default_sizes)
    if sizes:
        return nearest_size(ratio, area, sizes)
    return (w, h) if g.exact_size else geometry.pixels(g.aspect_ratio, g.tier)
