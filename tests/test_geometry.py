"""proxy.geometry: sizes to aspect ratio and tier, and back to canonical pixels."""

from __future__ import annotations

import pytest

from proxy.domain import ASPECT_RATIOS, TIER_EDGE, TIERS
from proxy.geometry import (
    MAX_EDGE,
    nearest_ratio,
    nearest_tier,
    parse_size,
    pixels,
    ratio_value,
    size_text,
)

UP_TO_2K = ("0.5K", "1K", "2K")


@pytest.mark.parametrize(("text", "expected"), [
    ("1024x1024", (1024, 1024)),
    ("1536x1024", (1536, 1024)),
    ("1024X1792", (1024, 1792)),
    ("1x1", (1, 1)),
    (f"{MAX_EDGE}x{MAX_EDGE}", (MAX_EDGE, MAX_EDGE)),
])
def test_parse_size_accepts(text: str, expected: tuple[int, int]) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", [
    "", "auto", "1024", "1024x", "x1024", "0x1024", "1024x0", "-1x5", "+5x5",
    f"{MAX_EDGE + 1}x1", f"1x{MAX_EDGE + 1}", "1024x1024x1", " 1024x1024", "1024 x 1024",
    "1e3x1000", "10.5x10", "1024*1024", "1024:1024",
])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(("ratio", "value"), [
    ("1:1", 1.0), ("16:9", 16 / 9), ("2:3", 2 / 3), ("8:1", 8.0), ("1:8", 0.125),
])
def test_ratio_value(ratio: str, value: float) -> None:
    assert ratio_value(ratio) == pytest.approx(value)


@pytest.mark.parametrize("ratio", ["", "16", "16/9", "0:1", "1:0", "a:b", "-1:2", "1.5:1", "1:1:1"])
def test_ratio_value_rejects(ratio: str) -> None:
    with pytest.raises(ValueError):
        ratio_value(ratio)


@pytest.mark.parametrize(("width", "height", "ratios", "expected"), [
    (1024, 1024, ASPECT_RATIOS, "1:1"),
    (1536, 1024, ASPECT_RATIOS, "3:2"),
    (1024, 1536, ASPECT_RATIOS, "2:3"),
    (1024, 1792, ASPECT_RATIOS, "9:16"),
    (1792, 1024, ASPECT_RATIOS, "16:9"),
    (2560, 1080, ASPECT_RATIOS, "21:9"),
    (4096, 512, ASPECT_RATIOS, "8:1"),
    (1000, 999, ASPECT_RATIOS, "1:1"),
    # Only a few supported: the closest on a log scale wins.
    (1536, 1024, ("1:1", "16:9"), "16:9"),
    (1200, 1024, ("1:1", "16:9"), "1:1"),
    (1024, 2048, ("1:1", "1:4"), "1:1"),
    (1024, 3000, ("1:1", "1:4"), "1:4"),
])
def test_nearest_ratio(width: int, height: int, ratios: tuple[str, ...], expected: str) -> None:
    assert nearest_ratio(width, height, ratios) == expected


def test_nearest_ratio_measures_on_a_log_scale() -> None:
    # 2:1 and 1:2 are equally far from 1:1; on a linear scale 1:2 would look closer.
    assert nearest_ratio(1400, 1000, ("1:2", "2:1")) == "2:1"
    assert nearest_ratio(1000, 1400, ("1:2", "2:1")) == "1:2"


@pytest.mark.parametrize(("width", "height", "tiers", "expected"), [
    (1024, 1024, TIERS, "1K"),
    (1536, 1024, TIERS, "1K"),
    (1024, 1792, TIERS, "1K"),
    (512, 512, TIERS, "0.5K"),
    (256, 256, TIERS, "0.5K"),
    (2048, 2048, TIERS, "2K"),
    (4096, 4096, TIERS, "4K"),
    (8192, 8192, TIERS, "4K"),
    (4096, 4096, UP_TO_2K, "2K"),
    (256, 256, ("1K", "2K"), "1K"),
    (3000, 3000, ("1K", "4K"), "4K"),
])
def test_nearest_tier(width: int, height: int, tiers: tuple[str, ...], expected: str) -> None:
    assert nearest_tier(width, height, tiers) == expected


@pytest.mark.parametrize(("ratio", "tier", "expected"), [
    ("1:1", "1K", (1024, 1024)),
    ("1:1", "0.5K", (512, 512)),
    ("1:1", "4K", (4096, 4096)),
    ("16:9", "1K", (1360, 768)),
    ("9:16", "1K", (768, 1360)),
])
def test_pixels_known_values(ratio: str, tier: str, expected: tuple[int, int]) -> None:
    assert pixels(ratio, tier) == expected


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("ratio", ASPECT_RATIOS)
def test_pixels_are_multiples_of_16_near_the_tier_area(ratio: str, tier: str) -> None:
    width, height = pixels(ratio, tier)
    assert width % 16 == 0
    assert height % 16 == 0
    square = TIER_EDGE[tier] ** 2
    assert abs(width * height - square) <= 0.10 * square
    assert width / height == pytest.approx(ratio_value(ratio), rel=0.1)


@pytest.mark.parametrize("tier", TIERS)
@pytest.mark.parametrize("ratio", ASPECT_RATIOS)
def test_pixels_round_trip_to_the_same_ratio_and_tier(ratio: str, tier: str) -> None:
    width, height = pixels(ratio, tier)
    assert nearest_ratio(width, height, ASPECT_RATIOS) == ratio
    assert nearest_tier(width, height, TIERS) == tier


def test_size_text() -> None:
    assert size_text(1536, 1024) == "1536x1024"
    assert parse_size(size_text(*pixels("3:2", "2K"))) == pixels("3:2", "2K")
