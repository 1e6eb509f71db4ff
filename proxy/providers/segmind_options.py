"""The `segmind` protocol's route data: its defaults and the parsed Options (an unusable `api`
or `v1_response` fails the route at first use)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.catalog import Route
from proxy.failures import Failure, Kind, UpstreamError
from proxy.providers.upstream import Pacing

# Nano Banana 2's input vocabulary on Segmind [C]; "" leaves a field out.
FIELDS = {"prompt": "prompt", "images": "image_urls", "aspect_ratio": "aspect_ratio",
          "resolution": "output_resolution", "output_format": "output_format", "seed": "seed"}
OUTPUT_FORMATS = {"png": "png", "jpeg": "jpg", "webp": "png"}  # Switchyard converts webp
STATES = {"QUEUED": "pending", "PROCESSING": "pending", "COMPLETED": "completed",
          "FAILED": "failed"}
# Where a finished body's images are, first match wins: `images[].url`, `output` (a URL, or
# text from a TEXT_AND_IMAGE model), `image` (base64, older v1 JSON answers).
RESULT_FIELDS = ("images", "output", "image")
BLOCK_MARKERS = ("nsfw", "safety", "content policy", "prohibited", "moderation", "flagged",
                 "sensitive")
CREDIT_MARKERS = ("credit", "spend limit", "balance")
# A FAILED job whose text names its input is the request's fault, not Segmind's.
INVALID_MARKERS = ("validation error", "mandatory", "must be", "not supported", "allowed values",
                   "invalid input", "invalid parameter")
RESET_HEADER = "x-rate-limit-reset-at-utc"
VIA_V1 = ("auto", "image", "json")


@dataclass(frozen=True, slots=True)
class Options(Pacing):
    """How to talk to one route: read from the provider's options, then the route's."""

    api: str = "v2"  # "v2": submit + poll; "v1": one blocking call (maintenance mode)
    v1_path: str = "/v1/{model}"
    v2_path: str = "/v2/{model}"
    v1_response: str = "auto"  # "image" | "json" | "auto" (by content type): [U]
    states: Mapping[str, str] = field(default_factory=lambda: STATES)
    result_fields: tuple[str, ...] = RESULT_FIELDS
    fields: Mapping[str, str] = field(default_factory=lambda: FIELDS)
    output_formats: Mapping[str, str] = field(default_factory=lambda: OUTPUT_FORMATS)
    resolutions: Mapping[str, str] = field(default_factory=dict)
    extra_input: Mapping[str, Any] = field(default_factory=dict)
    edit_aspect_ratio: str = ""  # an edit with no size asked: "" leaves the model's default
    inline_images: bool = True  # uploaded bytes go as data URIs in image_urls: [U]
    block_markers: tuple[str, ...] = BLOCK_MARKERS
    credit_markers: tuple[str, ...] = CREDIT_MARKERS
    invalid_markers: tuple[str, ...] = INVALID_MARKERS
    reset_header: str = RESET_HEADER

    @classmethod
    def of(cls, route: Route) -> Options:
        given = {**route.provider.options, **route.options}
        options = cls(
            api=str(given.get("api", "v2")), v1_path=str(given.get("v1_path", "/v1/{model}")),
            v2_path=str(given.get("v2_path", "/v2/{model}")),
            v1_response=str(given.get("v1_response", "auto")),
            states={**STATES, **given.get("states", {})},
            result_fields=tuple(given.get("result_fields", RESULT_FIELDS)),
            **Pacing.given(given),
            fields={**FIELDS, **given.get("fields", {})},
            output_formats={**OUTPUT_FORMATS, **given.get("output_formats", {})},
            resolutions=dict(given.get("resolutions", {})),
            extra_input=dict(given.get("extra_input", {})),
            edit_aspect_ratio=str(given.get("edit_aspect_ratio", "")),
            inline_images=bool(given.get("inline_images", True)),
            block_markers=tuple(given.get("content_block_markers", BLOCK_MARKERS)),
            credit_markers=tuple(given.get("credit_markers", CREDIT_MARKERS)),
            invalid_markers=tuple(given.get("invalid_markers", INVALID_MARKERS)),
            reset_header=str(given.get("reset_header", RESET_HEADER)),
        )
        if options.api not in ("v1", "v2") or options.v1_response not in VIA_V1:
            raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, "route options: api must be v1 "
                                        "or v2, and v1_response auto, image or json"))
        return options
