"""Pure geometry: OpenAI sizes to aspect ratio and resolution tier, and back to pixels."""

from __future__ import annotations

import math
from collections.abc import Iterable

from proxy.domain import TIER_EDGE

MAX_EDGE = 8192


def parse_size(size: str) -> tuple[int, int]:
    """'1536x1024' -> (1536, 1024); ValueError for anything else."""
    width, sep, height = size.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise ValueError(size)
    w, h = int(width), int(height)
    if not (0 < w <= MAX_EDGE and 0 < h <= MAX_EDGE):
        raise ValueError(size)
    return w, h


def ratio_value(ratio: str) -> float:
    """'16:9' -> 1.777…; ValueError if it is not two positive integers."""
    left, sep, right = ratio.partition(":")
    if not sep or not left.isdigit() or not right.isdigit() or not int(left) or not int(right):
        raise ValueError(ratio)
    return int(left) / int(right)


def nearest_ratio(width: int, height: int, ratios: Iterable[str]) -> str:
    """The supported ratio closest to width:height, measured on a log scale (2:1 ~ 1:2)."""
    target = math.log(width / height)
    return min(ratios, key=lambda r: abs(math.log(ratio_value(r)) - target))


def nearest_tier(width: int, height: int, tiers: Iterable[str]) -> str:
    """The supported tier whose pixel count is closest to width x height on a log scale."""
    target = math.log(width * height)
    return min(tiers, key=lambda t: abs(math.log(TIER_EDGE[t] ** 2) - target))


def pixels(ratio: str, tier: str) -> tuple[int, int]:
    """Canonical pixel size of a ratio at a tier: about TIER_EDGE² pixels, sides multiple of 16."""
    value = ratio_value(ratio)
    edge = TIER_EDGE[tier]
    width = edge * math.sqrt(value)
    height = width / value
    return _round16(width), _round16(height)


def _round16(x: float) -> int:
    return max(16, round(x / 16) * 16)


def size_text(width: int, height: int) -> str:
    return f"{width}x{height}"
