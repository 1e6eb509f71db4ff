"""Gemini's GenerateContentRequest to an ImageRequest, as Google's REST API reads it.

Field names may be lowerCamel or snake_case (proto3 JSON takes both). A field Switchyard
cannot honour is refused with a 400 naming its path; a hint no image host takes (temperature,
safetySettings…) is accepted and named in the x-switchyard-ignored header, never dropped
silently.

A conversation becomes one request: the prompt is the system instruction and the user turns'
text, in order; the reference images are every image in it (the user's, and the model's own
earlier answers, which is what an edit in a chat refers to). Thoughts are left out.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from proxy.api import inputs, uploads
from proxy.api.errors import bad_request
from proxy.api.surface import Translated, prompt, references, shape
from proxy.catalog import Model
from proxy.domain import ASPECT_RATIOS, ImageRequest, InputImage, Policy

# Gemini's imageSize values (the 0.5K tier is "512" in Google's SDK types) -> our tiers.
IMAGE_SIZES = {"512": "0.5K", "1K": "1K", "2K": "2K", "4K": "4K"}
MAX_CANDIDATES = 10
_TOP = frozenset({"contents", "generationConfig", "systemInstruction", "safetySettings",
                  "tools", "toolConfig", "cachedContent", "serviceTier", "store", "labels"})
_CONFIG = frozenset({
    "responseModalities", "imageConfig", "candidateCount", "seed",
    "temperature", "topP", "topK", "maxOutputTokens", "stopSequences", "presencePenalty",
    "frequencyPenalty", "thinkingConfig", "mediaResolution", "enableEnhancedCivicAnswers",
    "responseMimeType", "responseSchema", "responseJsonSchema", "responseLogprobs",
    "logprobs", "speechConfig",
})
# Sampling and thinking hints: accepted, named in the ignored header.
CONFIG_HINTS = ("temperature", "topP", "topK", "maxOutputTokens", "stopSequences",
                "presencePenalty", "frequencyPenalty", "thinkingConfig", "mediaResolution",
                "enableEnhancedCivicAnswers", "responseMimeType")
# What an image answer cannot be: refused unless empty.
_REFUSED = {"tools": "tools", "toolConfig": "tools", "cachedContent": "cached content",
            "responseSchema": "structured output", "responseJsonSchema": "structured output",
            "responseLogprobs": "log probabilities", "logprobs": "log probabilities",
            "speechConfig": "speech output"}
THRESHOLDS = frozenset({"HARM_BLOCK_THRESHOLD_UNSPECIFIED", "BLOCK_LOW_AND_ABOVE",
                        "BLOCK_MEDIUM_AND_ABOVE", "BLOCK_ONLY_HIGH", "BLOCK_NONE", "OFF"})
_PART = frozenset({"text", "inlineData", "fileData", "thought", "thoughtSignature"})
_SNAKE = re.compile(r"_([a-z0-9])")


def translate(model: Model, data: Any, policy: Policy, stream: bool) -> Translated:
    """A GenerateContentRequest body for `model`, validated field by field."""
    top = fields(data, "", _TOP)
    config = fields(_unset_empty(top.get("generationConfig")), "generationConfig", _CONFIG)
    ignored = [f"generationConfig.{name}" for name in CONFIG_HINTS
               if config.get(name) is not None]
    ignored += [name for name in ("serviceTier", "store", "labels") if top.get(name)]
    if _safety(top.get("safetySettings")):
        ignored.append("safetySettings")
    for name, what in _REFUSED.items():
        if top.get(name) or config.get(name):
            path = name if name in top else f"generationConfig.{name}"
            raise bad_request(path, f"'{path}' is not supported: image routes give no {what}",
                              code="unsupported_parameter")
    texts, images = _conversation(top)
    image = fields(_unset_empty(config.get("imageConfig")), "generationConfig.imageConfig",
                   frozenset({"aspectRatio", "imageSize"}))
    asked = ImageRequest(
        kind="edit" if images else "generate", model=model.name,
        prompt=prompt(texts, "contents"), n=_count(config.get("candidateCount")),
        geometry=shape(model, _enum(image, "aspectRatio", ASPECT_RATIOS),
                       IMAGE_SIZES.get(_enum(image, "imageSize", tuple(IMAGE_SIZES)) or "")),
        output_format="png", response_format="b64_json", seed=_seed(config.get("seed")),
        images=references(images, "contents"), policy=policy)
    return Translated(model, asked, tuple(ignored), stream,
                      with_text=_modalities(config.get("responseModalities")))


def fields(value: Any, path: str, allowed: frozenset[str]) -> dict[str, Any]:
    """An object's fields under their lowerCamel names; a 400 naming an unknown one."""
    if not isinstance(value, dict):
        raise bad_request(path or None, f"'{path}' must be an object" if path
                          else "the request body must be a JSON object", code="invalid_json")
    found: dict[str, Any] = {}
    for name, item in value.items():
        camel = _SNAKE.sub(lambda m: m.group(1).upper(), name)
        if camel not in allowed:
            where = f"{path}.{name}" if path else name
            raise bad_request(where, f"Invalid JSON payload received. Unknown name \"{name}\" "
                                     f"at '{path or 'request'}': Cannot find field.",
                              code="unknown_parameter")
        found[camel] = item
    return found


def _unset_empty(value: Any) -> Any:
    """proto3 JSON: null is the field left unset."""
    return {} if value is None else value


def _conversation(top: dict[str, Any]) -> tuple[list[str], list[InputImage]]:
    texts, images = [], []
    if top.get("systemInstruction") is not None:
        for part in _parts(top["systemInstruction"], "systemInstruction"):
            if "text" in part.fields:
                texts.append(part.text())
            elif not part.fields.get("thought"):  # never dropped unsaid
                raise bad_request(part.path, f"'{part.path}' must be a text part: a system "
                                             "instruction is text only",
                                  code="unsupported_value")
    contents = top.get("contents")
    if not isinstance(contents, list) or not contents:
        raise bad_request("contents", "'contents' is required: a list of turns, each with "
                                      "'parts'", code="missing_required_parameter")
    for i, content in enumerate(contents):
        turn = fields(content, f"contents[{i}]", frozenset({"role", "parts"}))
        role = turn.get("role")
        role = "user" if role is None or role == "" else role  # Google's default
        if role not in ("user", "model"):
            raise bad_request(f"contents[{i}].role", f"'contents[{i}].role' must be 'user' or "
                                                     f"'model'; got {role!r}")
        for part in _parts(content, f"contents[{i}]"):
            if part.fields.get("thought"):
                continue
            if "text" in part.fields and role == "user":
                texts.append(part.text())
            elif (found := part.image()) is not None:
                images.append(found)
    return texts, images


class _Part:
    """One part of a turn: text, inline image bytes or an image by URI."""

    def __init__(self, value: Any, path: str) -> None:
        self.fields = fields(value, path, _PART)
        self.path = path
        if self.fields.get("thought") is not None and \
                not isinstance(self.fields["thought"], bool):  # null: unset, as in proto3
            raise bad_request(f"{path}.thought", f"'{path}.thought' must be a boolean")
        kinds = [k for k in ("text", "inlineData", "fileData") if k in self.fields]
        if len(kinds) != 1 and not self.fields.get("thought"):
            raise bad_request(path, f"'{path}' must hold exactly one of text, inlineData, "
                                    "fileData")

    def text(self) -> str:
        value = self.fields["text"]
        if not isinstance(value, str):
            raise bad_request(f"{self.path}.text", f"'{self.path}.text' must be a string")
        return value

    def image(self) -> InputImage | None:
        if "inlineData" in self.fields:
            blob = fields(self.fields["inlineData"], f"{self.path}.inlineData",
                          frozenset({"mimeType", "data", "displayName"}))
            return uploads.checked_image(_bytes(blob.get("data"), f"{self.path}.inlineData.data"),
                                         f"{self.path}.inlineData.data")
        if "fileData" in self.fields:
            where = f"{self.path}.fileData"
            file = fields(self.fields["fileData"], where,
                          frozenset({"mimeType", "fileUri", "displayName"}))
            uri = file.get("fileUri")
            if not isinstance(uri, str):
                raise bad_request(f"{where}.fileUri", f"'{where}.fileUri' is required",
                                  code="missing_required_parameter")
            return uploads.image_ref(uri, f"{where}.fileUri")
        return None  # a model turn's words


def _parts(content: Any, path: str) -> list[_Part]:
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list):
        raise bad_request(f"{path}.parts", f"'{path}.parts' must be a list of parts")
    return [_Part(part, f"{path}.parts[{j}]") for j, part in enumerate(parts)]


def _bytes(value: Any, param: str) -> bytes:
    """proto3 JSON bytes: base64, standard or URL-safe (Google's SDK sends the latter)."""
    if not isinstance(value, str) or not value:
        raise bad_request(param, f"'{param}' must be base64 image bytes",
                          code="missing_required_parameter")
    text = value.translate(str.maketrans("-_", "+/"))
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(param, f"'{param}' holds invalid base64") from None


def _safety(value: Any) -> bool:
    """Checked as Google would; True if any were given (hosts apply their own filters)."""
    if value is None:
        return False
    if not isinstance(value, list):
        raise bad_request("safetySettings", "'safetySettings' must be a list")
    for i, item in enumerate(value):
        where = f"safetySettings[{i}]"
        setting = fields(item, where, frozenset({"category", "threshold", "method"}))
        category, threshold = setting.get("category"), setting.get("threshold")
        if not isinstance(category, str) or not category.startswith("HARM_CATEGORY_"):
            raise bad_request(f"{where}.category", f"'{where}.category' must be a "
                                                   "HARM_CATEGORY_… value")
        if not isinstance(threshold, str) or threshold not in THRESHOLDS:
            raise bad_request(f"{where}.threshold", f"'{where}.threshold' must be one of "
                                                    f"{', '.join(sorted(THRESHOLDS))}")
    return bool(value)


def _modalities(value: Any) -> bool:
    """Whether the answer may carry words: IMAGE must be asked, TEXT may be."""
    if value is None:
        return True
    param = "generationConfig.responseModalities"
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_request(param, f"'{param}' must be a list such as [\"TEXT\", \"IMAGE\"]")
    asked = {v.upper() for v in value}
    if "IMAGE" not in asked or not asked <= {"TEXT", "IMAGE"}:
        raise bad_request(param, f"'{param}' must include IMAGE, and may add TEXT: the models "
                                 "served here draw", code="unsupported_value")
    return "TEXT" in asked


def _enum(config: dict[str, Any], name: str, allowed: tuple[str, ...]) -> str | None:
    value = config.get(name)
    if value is not None and value not in allowed:
        param = f"generationConfig.imageConfig.{name}"
        raise bad_request(param, f"'{param}' must be one of {', '.join(allowed)}; got "
                                 f"{value!r}")
    return value if isinstance(value, str) else None


def _count(value: Any) -> int:
    return _integer(value, "generationConfig.candidateCount", 1, MAX_CANDIDATES) or 1


def _seed(value: Any) -> int | None:
    return _integer(value, "generationConfig.seed", 0, 2**31 - 1)


def _integer(value: Any, param: str, low: int, high: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = inputs.integer_text(value)  # proto3 JSON may quote integers
    elif isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON Schema's integer includes 2.0
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise bad_request(param, f"'{param}' must be an integer from {low} to {high}")
    return value

