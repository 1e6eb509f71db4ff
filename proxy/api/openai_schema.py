"""OpenAI images bodies to ImageRequest, field for field as in OpenAI's published spec.

Every rejection names the offending parameter; nothing is silently clamped or dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy import geometry
from proxy.api import inputs, uploads
from proxy.api.auth import resolve_model
from proxy.api.caching import cache_ttl
from proxy.api.errors import bad_request
from proxy.api.policy import request_policy
from proxy.api.uploads import image_ref
from proxy.billing.keys import KeyRecord
from proxy.catalog import BACKGROUNDS, Catalog, Model
from proxy.domain import (
    ASPECT_RATIOS,
    OUTPUT_FORMATS,
    TIERS,
    Geometry,
    ImageRequest,
    InputImage,
    Kind,
    Policy,
)
from proxy.services import Services

MAX_PROMPT = 32_000
MAX_IMAGES = 16
_ENUMS: dict[str, tuple[str, ...]] = {
    "response_format": ("b64_json", "url"),
    "output_format": OUTPUT_FORMATS,
    "background": BACKGROUNDS,
    "moderation": ("low", "auto"),
    "style": ("vivid", "natural"),
    "input_fidelity": ("high", "low"),
}
# `xhigh` and `max` are gpt-image-2.5's (openai-python 3.63.0 types/image_generate_params.py
# and image_edit_params.py); only routes that list them serve them (proxy.routing.fit).
_QUALITY = {
    "generate": ("standard", "hd", "low", "medium", "high", "xhigh", "max", "auto"),
    "edit": ("standard", "low", "medium", "high", "xhigh", "max", "auto"),
}
_COMMON = frozenset({
    "model", "prompt", "n", "size", "quality", "response_format", "output_format",
    "output_compression", "background", "user", "stream", "partial_images",
    # Switchyard extensions, sent by the SDK through extra_body.
    "aspect_ratio", "resolution", "seed", "image_urls", "route", "cache",
})
FIELDS: dict[str, frozenset[str]] = {
    "generate": _COMMON | {"moderation", "style"},
    "edit": _COMMON | {"images", "mask", "input_fidelity", "moderation"},
}


class Body:
    """Typed reads from a JSON object or from form fields (where every value is a string)."""

    def __init__(self, data: Mapping[str, Any], form: bool) -> None:
        self.data = data
        self.form = form

    def string(self, name: str, default: str | None = None) -> str | None:
        value = self.data.get(name)
        if value is None:
            return default
        if not isinstance(value, str):
            raise bad_request(name, f"'{name}' must be a string")
        return inputs.text(value, name)

    def enum(self, name: str, allowed: tuple[str, ...], default: str | None = None) -> str | None:
        value = self.string(name, default)
        if value is not None and value not in allowed:
            raise bad_request(name, f"'{name}' must be one of {', '.join(allowed)}; "
                                    f"got {value!r}")
        return value

    def integer(self, name: str, low: int, high: int, default: int | None = None) -> int | None:
        value = self.data.get(name)
        if value is None or (self.form and value == ""):
            return default
        if self.form and isinstance(value, str):
            value = inputs.integer_text(value)
        elif isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON Schema's integer includes 1.0
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise bad_request(name, f"'{name}' must be an integer from {low} to {high}")
        return value

    def boolean(self, name: str) -> bool:
        value = self.data.get(name)
        if self.form and isinstance(value, str):
            value = {"true": True, "false": False, "": None}.get(value.lower(), value)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise bad_request(name, f"'{name}' must be a boolean")
        return value


def model_name(data: Mapping[str, Any]) -> str:
    value = data.get("model")
    if not isinstance(value, str) or not value:
        raise bad_request("model", "'model' is required: one of the names GET /v1/models lists",
                          code="missing_required_parameter")
    return value


def parse(kind: Kind, body: Body, model: Model, policy: Policy,
          images: tuple[InputImage, ...] = (), mask: InputImage | None = None) -> ImageRequest:
    """Validate every field of an images request against the spec and the model's shapes."""
    for name in body.data:
        if name not in FIELDS[kind]:
            if name == "image" or name.startswith("image["):  # a multipart edit's files
                raise bad_request(name, f"'{name}' is an uploaded file of a multipart edit; "
                                        "as JSON, an edit takes 'images': [{image_url}] and "
                                        "a generation 'image_urls'")
            raise bad_request(name, f"unrecognized request argument supplied: {name}",
                              code="unknown_parameter")
    if body.boolean("stream"):
        # The images endpoints take `stream` before this; a job or batch item cannot stream.
        raise bad_request("stream", "a queued job or batch item is not streamed; "
                                    "omit 'stream' or set it to false", code="unsupported_value")
    body.integer("partial_images", 0, 3)
    urls = _image_urls(body)
    return ImageRequest(
        kind=kind, model=model.name, prompt=_prompt(body), n=body.integer("n", 1, 10, 1) or 1,
        geometry=_geometry(body, model),
        output_format=body.enum("output_format", OUTPUT_FORMATS, "png") or "png",
        response_format="url" if body.enum("response_format", _ENUMS["response_format"]) == "url"
        else "b64_json",
        quality=body.enum("quality", _QUALITY[kind], "auto") or "auto",
        background=body.enum("background", BACKGROUNDS, "auto") or "auto",
        output_compression=body.integer("output_compression", 0, 100),
        moderation=body.enum("moderation", _ENUMS["moderation"]),
        style=body.enum("style", _ENUMS["style"]),
        user=body.string("user"),
        seed=body.integer("seed", 0, 2**32 - 1),
        input_fidelity=body.enum("input_fidelity", _ENUMS["input_fidelity"]),
        images=images + urls, mask=mask, policy=policy, cache_ttl_s=cache_ttl(body.data),
    )


def _prompt(body: Body) -> str:
    prompt = body.string("prompt")
    if prompt is None or not prompt.strip():
        raise bad_request("prompt", "'prompt' is required and must not be empty",
                          code="missing_required_parameter" if prompt is None else "empty_prompt")
    if len(prompt) > MAX_PROMPT:
        raise bad_request("prompt", f"'prompt' is {len(prompt)} characters; "
                                    f"the maximum is {MAX_PROMPT}", code="string_above_max_length")
    return prompt


def _geometry(body: Body, model: Model) -> Geometry:
    size = body.string("size")
    ratio = body.enum("aspect_ratio", ASPECT_RATIOS)
    tier = _resolution(body)
    ratios, tiers = model.aspect_ratios(), model.tiers()
    if size not in (None, "auto") and (ratio or tier):
        raise bad_request("size", "give either 'size' or 'aspect_ratio'/'resolution', not both")
    if ratio or tier:
        return Geometry(ratio or "1:1", tier or default_tier(tiers), None, "aspect_ratio")
    if size in (None, "auto"):
        return Geometry("1:1" if "1:1" in ratios else ratios[0], default_tier(tiers), None,
                        "default")
    assert size is not None
    try:
        width, height = geometry.parse_size(size)
    except ValueError:
        raise bad_request("size", f"'size' must be 'auto' or WIDTHxHEIGHT (each 1 to "
                                  f"{geometry.MAX_EDGE}); got {size!r}") from None
    return Geometry(geometry.nearest_ratio(width, height, ratios),
                    geometry.nearest_tier(width, height, tiers), f"{width}x{height}", "size")


def _resolution(body: Body) -> str | None:
    value = body.string("resolution")
    if value is None:
        return None
    canonical = {t.lower(): t for t in TIERS}.get(value.strip().lower())
    if canonical is None:
        raise bad_request("resolution", f"'resolution' must be one of {', '.join(TIERS)}")
    return canonical


def default_tier(tiers: tuple[str, ...]) -> str:
    return "1K" if "1K" in tiers else tiers[0]


def _image_urls(body: Body) -> tuple[InputImage, ...]:
    value = body.data.get("image_urls")
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_IMAGES or \
            not all(isinstance(url, str) for url in value):
        raise bad_request("image_urls", f"'image_urls' must be a list of at most {MAX_IMAGES} "
                                        "https or data: URLs")
    return tuple(image_ref(url, f"image_urls[{i}]") for i, url in enumerate(value))


def from_json(svc: Services, key: KeyRecord, endpoint: str, data: dict[str, Any],
              strategy_header: str | None = None) -> tuple[Model, ImageRequest]:
    """A JSON images request (generations, or edits with `images: [{image_url}]`) parsed and
    validated: what the handlers and the job worker share."""
    return json_request(svc.catalog, key, endpoint, data, strategy_header)


def json_request(catalog: Catalog, key: KeyRecord, endpoint: str, data: dict[str, Any],
                 strategy_header: str | None = None) -> tuple[Model, ImageRequest]:
    """from_json on the catalog alone: what a process without the app's services (a batch's
    line checker, proxy/api/batch_lines.py) can call."""
    images: tuple[InputImage, ...] = ()
    mask = None
    if endpoint == "edits":
        images = uploads.json_images(data.get("images")) if "images" in data else ()
        mask = uploads.json_image(data["mask"], "mask") if data.get("mask") else None
        data = {k: v for k, v in data.items() if k not in ("images", "mask")}
        if not images:
            raise bad_request("image", "'image' is required: upload at least one image",
                              code="missing_required_parameter")
    model, suffix = resolve_model(catalog, model_name(data), key)
    policy = request_policy(data.get("route"), strategy_header, suffix)
    kind: Kind = "edit" if endpoint == "edits" else "generate"
    return model, parse(kind, Body(data, form=False), model, policy, images, mask)
