"""The `wavespeed` protocol's route data: defaults, the parsed Options, and the check that names
a misspelt or unusable option when the catalog loads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from proxy.catalog import Route
from proxy.failures import Kind
from proxy.providers.images_api import error_kinds
from proxy.providers.upstream import Pacing

FIELDS = {"prompt": "prompt", "images": "images", "aspect_ratio": "aspect_ratio",
          "resolution": "resolution", "output_format": "output_format", "seed": ""}
OUTPUT_FORMATS = {"png": "png", "jpeg": "jpeg", "webp": "png"}  # webp: converted by us
RESOLUTIONS = {"0.5K": "0.5k", "1K": "1k", "2K": "2k", "4K": "4k"}  # 0.5k is [U]
BLOCK_MARKERS = ("sensitive", "nsfw", "content policy", "moderation", "safety")
# Words of an auth-style refusal that only a top-up cures (keys stay inert until then).
TOPUP_MARKERS = ("top up", "top-up", "topup", "insufficient balance", "insufficient credit")
# `data.code` of a failed prediction (wavespeed.ai/docs/error-codes); `error_kinds` overrides.
ERROR_KINDS = {"1200": Kind.CONTENT_BLOCKED, "1400": Kind.BAD_REQUEST,
               "1401": Kind.BAD_REQUEST, "1402": Kind.BAD_REQUEST,
               "5003": Kind.OVERLOADED, "5004": Kind.TIMEOUT}


@dataclass(frozen=True, slots=True)
class Options(Pacing):
    """How to talk to one route: read from the provider's options, then the route's."""

    submit_path: str = "/{model}/text-to-image"  # {model}: the route's upstream_model
    edit_path: str = "/{model}/edit"  # used when reference images are given
    result_path: str = "/predictions/{id}/result"
    follow_urls_get: bool = False  # poll data.urls.get instead of result_path
    upload_path: str = "/media/upload/binary"
    inline_images: bool = False  # uploaded bytes as data URIs instead of uploading them first
    fields: Mapping[str, str] = field(default_factory=lambda: FIELDS)
    output_formats: Mapping[str, str] = field(default_factory=lambda: OUTPUT_FORMATS)
    resolutions: Mapping[str, str] = field(default_factory=lambda: RESOLUTIONS)
    edit_aspect_ratio: str = ""  # "": an edit with no size asked leaves it out (keeps input's)
    extra_input: Mapping[str, Any] = field(default_factory=dict)
    completed_states: tuple[str, ...] = ("completed",)
    failed_states: tuple[str, ...] = ("failed",)
    block_markers: tuple[str, ...] = BLOCK_MARKERS
    topup_markers: tuple[str, ...] = TOPUP_MARKERS
    error_kinds: Mapping[str, Kind] = field(default_factory=lambda: ERROR_KINDS)

    @classmethod
    def of(cls, route: Route) -> Options:
        given = {**route.provider.options, **route.options}
        simple: dict[str, Any] = {name: str(given[name]) for name in (
            "submit_path", "edit_path", "result_path", "upload_path", "edit_aspect_ratio")
            if name in given}
        simple.update(Pacing.given(given))
        return cls(
            **simple,
            follow_urls_get=bool(given.get("follow_urls_get")),
            inline_images=bool(given.get("inline_images")),
            fields={**FIELDS, **given.get("fields", {})},
            output_formats={**OUTPUT_FORMATS, **given.get("output_formats", {})},
            resolutions={**RESOLUTIONS, **given.get("resolutions", {})},
            extra_input=dict(given.get("extra_input", {})),
            completed_states=tuple(given.get("completed_states", ("completed",))),
            failed_states=tuple(given.get("failed_states", ("failed",))),
            block_markers=tuple(given.get("content_block_markers", BLOCK_MARKERS)),
            topup_markers=tuple(given.get("topup_markers", TOPUP_MARKERS)),
            error_kinds=error_kinds(route, ERROR_KINDS))

    @property
    def terminal(self) -> frozenset[str]:
        return frozenset(self.completed_states + self.failed_states)


KNOWN = {f.name for f in fields(Options)} - {"block_markers"} | {"content_block_markers",
                                                                  "token_command"}


def validate(options: Mapping[str, Any]) -> list[str]:
    """Problems with a route's merged options, found when the catalog loads rather than as
    a failed request: misspelt names, unknown failure kinds, unusable paths and states."""
    problems = [f"options.{name}: unknown option" for name in options if name not in KNOWN]
    kinds = sorted(kind.value for kind in Kind)
    problems += [f"options.error_kinds.{code}: {kind!r} is not one of {', '.join(kinds)}"
                 for code, kind in dict(options.get("error_kinds", {})).items()
                 if kind not in kinds]
    if "{id}" not in str(options.get("result_path", "{id}")):
        problems.append("options.result_path: must contain {id}")
    problems += [f"options.{name}: must be a non-empty list of state names"
                 for name in ("completed_states", "failed_states")
                 if name in options and not (isinstance(options[name], list) and options[name])]
    return problems
