"""The `kie` protocol's route data: defaults, the parsed Options, and the check that names a
misspelt option or an unknown failure class when the catalog loads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.catalog import Route
from proxy.failures import Kind
from proxy.providers.upstream import PACING, Pacing

# Input field names of nano-banana-2 / nano-banana-pro [C]; google/nano-banana renames some.
FIELDS = {"prompt": "prompt", "images": "image_input", "aspect_ratio": "aspect_ratio",
          "resolution": "resolution", "output_format": "output_format", "seed": ""}
OUTPUT_FORMATS = {"png": "png", "jpeg": "jpg", "webp": "png"}  # webp is converted here
# The task record's field names [S: client code and a reseller's copy of the docs].
RECORD = {"state": "state", "result": "resultJson", "urls": "resultUrls",
          "fail_code": "failCode", "fail_msg": "failMsg"}
UPLOAD = {"data": "base64Data", "path": "uploadPath", "url": "downloadUrl"}  # [S] docs mirror
UPLOAD_URL = "https://kieai.redpandaai.co/api/file-base64-upload"
PENDING = ("waiting", "queuing", "generating")
SUCCESS = ("success",)
FAILED = ("fail", "failed")  # "fail" [C]; some clients also see "failed" [S]
# Kie's envelope codes [C]; 402 is "insufficient credits", 455 maintenance, 505 "disabled".
CODES = {401: Kind.AUTH, 402: Kind.AUTH, 404: Kind.UPSTREAM_BROKEN, 422: Kind.BAD_REQUEST,
         429: Kind.RATE_LIMITED, 455: Kind.OVERLOADED, 500: Kind.UPSTREAM_BROKEN,
         501: Kind.UPSTREAM_BROKEN, 505: Kind.UPSTREAM_BROKEN}
POLL_RETRY_CODES = (429, 455, 500)  # inside a poll's HTTP 200: "ask again", not "failed"
BLOCK_MARKERS = ("nsfw", "content policy", "sensitive", "safety", "prohibited")
# Kie's file host refuses some default client agents with 403 [S]; curl-like agents pass.
USER_AGENT = "Mozilla/5.0 (compatible; Switchyard)"


@dataclass(frozen=True, slots=True)
class Options(Pacing):
    """How to talk to one route: read from the provider's options, then the route's."""

    poll_interval_s: float = 2.0  # Kie's own pacing, slower than the other hosts'
    poll_interval_max_s: float = 8.0
    edit_model: str = ""  # set: requests with reference images use this model id
    edit_aspect_ratio: str = "auto"  # an edit with no size asked keeps the input's shape
    callback_url: str = ""  # sent as callBackUrl; Switchyard still polls
    fields: Mapping[str, str] = field(default_factory=lambda: FIELDS)
    output_formats: Mapping[str, str] = field(default_factory=lambda: OUTPUT_FORMATS)
    resolutions: Mapping[str, str] = field(default_factory=dict)  # tier -> token, if not equal
    extra_input: Mapping[str, Any] = field(default_factory=dict)
    record: Mapping[str, str] = field(default_factory=lambda: RECORD)
    upload: Mapping[str, str] = field(default_factory=lambda: UPLOAD)
    upload_url: str = UPLOAD_URL  # "": uploaded bytes are refused (URLs only)
    upload_path: str = "switchyard"
    inline_images: bool = False  # send uploaded bytes as data URIs instead of uploading them
    pending_states: tuple[str, ...] = PENDING
    success_states: tuple[str, ...] = SUCCESS
    failed_states: tuple[str, ...] = FAILED
    ok_codes: tuple[int, ...] = (200,)
    codes: Mapping[int, Kind] = field(default_factory=lambda: CODES)
    poll_retry_codes: tuple[int, ...] = POLL_RETRY_CODES
    fail_codes: Mapping[str, Kind] = field(default_factory=dict)  # failCode -> class [U]
    block_markers: tuple[str, ...] = BLOCK_MARKERS
    user_agent: str = USER_AGENT  # for result downloads; "" leaves httpx's own
    mask_as_reference: bool = False  # else a mask is refused: these models cannot apply one

    @classmethod
    def of(cls, route: Route) -> Options:
        given = {**route.provider.options, **route.options}
        simple = {f: type(getattr(cls(), f))(given[f]) for f in _SIMPLE if f in given}
        return cls(
            **simple,
            fields={**FIELDS, **given.get("fields", {})},
            output_formats={**OUTPUT_FORMATS, **given.get("output_formats", {})},
            resolutions=dict(given.get("resolutions", {})),
            extra_input=dict(given.get("extra_input", {})),
            record={**RECORD, **given.get("record_fields", {})},
            upload={**UPLOAD, **given.get("upload_fields", {})},
            pending_states=tuple(given.get("pending_states", PENDING)),
            success_states=tuple(given.get("success_states", SUCCESS)),
            failed_states=tuple(given.get("failed_states", FAILED)),
            ok_codes=tuple(int(c) for c in given.get("ok_codes", (200,))),
            codes={**CODES, **{int(c): Kind(k) for c, k in given.get("codes", {}).items()}},
            poll_retry_codes=tuple(int(c) for c in given.get("poll_retry_codes",
                                                              POLL_RETRY_CODES)),
            fail_codes={str(c): Kind(k) for c, k in given.get("fail_codes", {}).items()},
            block_markers=tuple(given.get("content_block_markers", BLOCK_MARKERS)),
        )


# Scalar options read as given, converted to the type of their default.
_SIMPLE = (*PACING, "edit_model", "edit_aspect_ratio", "callback_url", "upload_url",
           "upload_path", "inline_images", "user_agent", "mask_as_reference")
_LISTS = ("pending_states", "success_states", "failed_states", "ok_codes", "poll_retry_codes",
          "content_block_markers")
KNOWN = {*_SIMPLE, *_LISTS, "fields", "output_formats", "resolutions", "extra_input",
         "record_fields", "upload_fields", "codes", "fail_codes"}


def validate(options: Mapping[str, Any]) -> list[str]:
    """Problems in a route's merged options, found when the catalog loads rather than as a
    failed request: misspelt names, unknown failure classes, codes that are not numbers."""
    problems = [f"options.{name}: unknown option" for name in options if name not in KNOWN]
    kinds = sorted(kind.value for kind in Kind)
    for name in ("codes", "fail_codes"):
        for code, kind in dict(options.get(name, {})).items():
            if kind not in kinds:
                problems.append(f"options.{name}.{code}: {kind!r} is not one of "
                                f"{', '.join(kinds)}")
            if name == "codes" and not str(code).isdigit():
                problems.append(f"options.codes.{code}: not a numeric code")
    problems += [f"options.{name}: must be a list" for name in _LISTS
                 if name in options and not isinstance(options[name], list)]
    return problems
