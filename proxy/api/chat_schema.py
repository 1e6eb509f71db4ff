"""A chat completions request for an image model to an ImageRequest, in the shape OpenRouter
set for image output: `modalities`, `image_config.aspect_ratio` / `image_size`, reference
images as `image_url` content parts.

A conversation becomes one request: the prompt is the system and user messages' text, in
order; the reference images are every image in it (the user's parts, and the assistant's
earlier `images`, which is what an edit in a chat refers to). Sampling hints no image host
takes are accepted and named in the x-switchyard-ignored header; what an image answer cannot
be (tools, JSON output, audio) is a 400 naming the field.
"""

from __future__ import annotations

from typing import Any

from proxy.api.errors import bad_request
from proxy.api.openai_schema import Body
from proxy.api.surface import Translated, prompt, references, shape
from proxy.api.uploads import image_ref
from proxy.catalog import Model
from proxy.domain import ASPECT_RATIOS, TIERS, ImageRequest, InputImage, Policy

FIELDS = frozenset({"model", "messages", "modalities", "image_config", "stream",
                    "stream_options", "n", "seed", "user", "route"})
# Sampling hints: taken, named in the ignored header, each checked for the JSON type OpenAI's
# spec gives it (a client's mistake in one is a 400 there, and here).
_NUMBER, _INTEGER, _TEXT, _FLAG, _OBJECT = "a number", "an integer", "a string", \
    "a boolean", "an object"
_HINT_TYPES = {"temperature": _NUMBER, "top_p": _NUMBER, "max_tokens": _INTEGER,
               "max_completion_tokens": _INTEGER, "frequency_penalty": _NUMBER,
               "presence_penalty": _NUMBER, "stop": "a string or a list of strings",
               "logit_bias": _OBJECT, "store": _FLAG, "metadata": _OBJECT,
               "service_tier": _TEXT, "reasoning_effort": _TEXT, "verbosity": _TEXT,
               "parallel_tool_calls": _FLAG, "safety_identifier": _TEXT,
               "prompt_cache_key": _TEXT}
HINTS = tuple(_HINT_TYPES)
# What an image answer cannot be: refused unless empty or false.
REFUSED = {"tools": "tool calls", "tool_choice": "tool calls", "functions": "tool calls",
           "function_call": "tool calls", "response_format": "a response format",
           "audio": "audio", "logprobs": "log probabilities",
           "top_logprobs": "log probabilities", "prediction": "predicted outputs",
           "web_search_options": "web search"}
ROLES = ("system", "developer", "user", "assistant")
MAX_N = 10
_MESSAGE = frozenset({"role", "content", "name", "images"})


def translate(model: Model, data: dict[str, Any], policy: Policy) -> Translated:
    """A chat completions body for `model`, validated field by field."""
    for name, value in data.items():
        if name in REFUSED and value not in (None, False, [], {}):
            raise bad_request(name, f"'{name}' is not supported: image models give no "
                                    f"{REFUSED[name]}", code="unsupported_parameter")
        if name not in FIELDS and name not in HINTS and name not in REFUSED:
            raise bad_request(name, f"Unrecognized request argument supplied: {name}",
                              code="unknown_parameter")
    for name in HINTS:
        if (value := data.get(name)) is not None and not _is(value, _HINT_TYPES[name]):
            raise bad_request(name, f"'{name}' must be {_HINT_TYPES[name]}")
    body = Body(data, form=False)
    stream = body.boolean("stream")
    _stream_options(data.get("stream_options"), stream)
    texts, images = _conversation(data.get("messages"))
    ratio, tier = _image_config(data.get("image_config"))
    asked = ImageRequest(
        kind="edit" if images else "generate", model=model.name,
        prompt=prompt(texts, "messages"), n=body.integer("n", 1, MAX_N, 1) or 1,
        geometry=shape(model, ratio, tier), output_format="png",
        response_format="b64_json", user=body.string("user"),
        seed=body.integer("seed", 0, 2**32 - 1), images=references(images, "messages"),
        policy=policy)
    ignored = tuple(name for name in HINTS if data.get(name) is not None)
    return Translated(model, asked, ignored, stream,
                      with_text=_modalities(data.get("modalities")))


def _is(value: Any, kind: str) -> bool:
    if kind == _NUMBER:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == _INTEGER:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == _FLAG:
        return isinstance(value, bool)
    if kind == _OBJECT:
        return isinstance(value, dict)
    if kind == _TEXT:
        return isinstance(value, str)
    return isinstance(value, str) or (isinstance(value, list) and  # stop
                                      all(isinstance(item, str) for item in value))


def _conversation(messages: Any) -> tuple[list[str], list[InputImage]]:
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages", "'messages' is required: a list of messages",
                          code="missing_required_parameter")
    texts: list[str] = []
    images: list[InputImage] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad_request(where, f"'{where}' must be an object with 'role' and 'content'")
        for name, value in message.items():
            if name not in _MESSAGE and value not in (None, [], "", {}):
                raise bad_request(f"{where}.{name}", f"'{where}.{name}' is not supported "
                                                     "for image models",
                                  code="unsupported_parameter")
        if message.get("name") is not None and not isinstance(message["name"], str):
            raise bad_request(f"{where}.name", f"'{where}.name' must be a string")
        role = message.get("role")
        if role not in ROLES:
            raise bad_request(f"{where}.role", f"'{where}.role' must be one of "
                                               f"{', '.join(ROLES)}; got {role!r}")
        said, shown = _content(message.get("content"), f"{where}.content")
        images += shown + _images(message.get("images"), f"{where}.images")
        if role != "assistant":  # the assistant's own words are not the prompt
            texts += said
    return texts, images


def _content(content: Any, where: str) -> tuple[list[str], list[InputImage]]:
    """A message's content: a string, or a list of text and image_url parts."""
    if content is None or isinstance(content, str):
        return [content or ""], []
    if not isinstance(content, list):
        raise bad_request(where, f"'{where}' must be a string or a list of content parts")
    texts, images = [], []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            images.append(_image_url(part.get("image_url"), f"{at}.image_url"))
        else:
            raise bad_request(at, f"'{at}' must be a text or image_url part; image models "
                                  "take no other input", code="unsupported_value")
    return texts, images


def _images(value: Any, where: str) -> list[InputImage]:
    """An assistant message's `images`, as a chat client sends its history back."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise bad_request(where, f"'{where}' must be a list of image_url items")
    return [_image_url(item.get("image_url") if isinstance(item, dict) else None,
                       f"{where}[{k}].image_url") for k, item in enumerate(value)]


def _image_url(value: Any, where: str) -> InputImage:
    url = value.get("url") if isinstance(value, dict) else None
    if not isinstance(url, str):
        raise bad_request(f"{where}.url", f"'{where}.url' is required: an https or data: URL",
                          code="missing_required_parameter")
    return image_ref(url, f"{where}.url")


def _image_config(value: Any) -> tuple[str | None, str | None]:
    if value is None:
        return None, None
    if not isinstance(value, dict):
        raise bad_request("image_config", "'image_config' must be an object")
    for name in value:
        if name not in ("aspect_ratio", "image_size"):
            raise bad_request(f"image_config.{name}", f"'image_config.{name}' is not "
                                                      "supported; use aspect_ratio and "
                                                      "image_size", code="unknown_parameter")
    return _enum(value, "aspect_ratio", ASPECT_RATIOS), _enum(value, "image_size", TIERS)


def _enum(config: dict[str, Any], name: str, allowed: tuple[str, ...]) -> str | None:
    value = config.get(name)
    if value is not None and value not in allowed:
        raise bad_request(f"image_config.{name}", f"'image_config.{name}' must be one of "
                                                  f"{', '.join(allowed)}; got {value!r}")
    return value if isinstance(value, str) else None


def _modalities(value: Any) -> bool:
    """Whether the answer may carry words: "image" must be asked, "text" may be."""
    if value is None:
        return True
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_request("modalities", "'modalities' must be a list such as "
                                        "[\"image\", \"text\"]")
    if "image" not in value or not set(value) <= {"image", "text"}:
        raise bad_request("modalities", "'modalities' must include \"image\" and may add "
                                        "\"text\": the models served here draw",
                          code="unsupported_value")
    return "text" in value


def _stream_options(value: Any, stream: bool) -> None:
    if value is None:
        return
    if not stream:
        raise bad_request("stream_options", "'stream_options' is only allowed when 'stream' "
                                            "is true")
    if not isinstance(value, dict) or not set(value) <= {"include_usage",
                                                          "include_obfuscation"}:
        raise bad_request("stream_options", "'stream_options' takes only 'include_usage'")
