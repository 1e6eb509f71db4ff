"""The `task` protocol's route data: the option schema, its validation, and the parsed Options.

`validate(options)` returns every problem, each naming its option, so the catalog can refuse a
bad route at load; `Options.of(route)` raises the same problems at first use.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.catalog import Route
from proxy.failures import Failure, Kind, UpstreamError
from proxy.providers import jsonpath
from proxy.providers.jsonpath import Path, PathError
from proxy.providers.upstream import PACING, Pacing

STATES = ("pending", "succeeded", "failed")
BODY_FIELDS = frozenset({"model", "prompt", "n", "aspect_ratio", "resolution", "size", "images",
                         "output_format", "callback_url", "seed"})
POLL_FIELDS = frozenset({"id", "model"})
OUTPUT_FORMATS = {"png": "png", "jpeg": "jpeg", "webp": "webp"}
BLOCK_MARKERS = ("content policy", "content_policy", "nsfw", "safety", "flagged", "moderation")
MESSAGE_PATHS = ("error.message", "error", "message", "msg", "detail")
PLACEHOLDER = re.compile(r"\{(\w+)\}")

REQUIRED = ("submit_path", "body", "task_id_path", "state_path", "states", "result_paths")
PATHS = ("task_id_path", "poll_url_path", "state_path", "result_paths", "error_message_path",
         "error_code_path", "code_path")
NUMBERS = PACING
TEXTS = ("auth_header", "auth_scheme", "edit_aspect_ratio", "callback_url")
TABLES = ("resolutions", "output_formats", "error_kinds")
METHODS = {"submit_method": ("POST", "PUT"), "poll_method": ("GET", "POST")}
KNOWN = frozenset({*REQUIRED, *PATHS, *NUMBERS, *TEXTS, *TABLES, *METHODS, "poll_path",
                   "poll_body", "ok_codes", "inline_images", "content_block_markers",
                   # read by other layers (credentials.py), not by this protocol
                   "token_command", "token_lifetime_s"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Options(Pacing):
    """A route's task settings, read from the provider's options then the route's."""

    provider: str
    submit_path: str
    body: Mapping[str, Any]
    task_id: tuple[Path, ...]
    state: tuple[Path, ...]
    states: Mapping[str, str]  # the host's state value, as text -> pending|succeeded|failed
    results: tuple[Path, ...]
    submit_method: str = "POST"
    auth_header: str = "Authorization"
    auth_scheme: str = "Bearer"  # "" sends the bare key
    poll_method: str = "GET"
    poll_path: str = ""
    poll_url: tuple[Path, ...] = ()
    poll_body: Mapping[str, Any] | None = None
    error_message: tuple[Path, ...] = ()
    error_code: tuple[Path, ...] = ()
    code: tuple[Path, ...] = ()
    ok_codes: frozenset[str] = frozenset()
    error_kinds: Mapping[str, Kind] = field(default_factory=dict)
    resolutions: Mapping[str, str] = field(default_factory=dict)
    output_formats: Mapping[str, str] = field(default_factory=lambda: OUTPUT_FORMATS)
    edit_aspect_ratio: str = ""
    inline_images: bool = False
    callback_url: str = ""
    block_markers: tuple[str, ...] = BLOCK_MARKERS

    @classmethod
    def of(cls, route: Route) -> Options:
        """The route's options; UPSTREAM_BROKEN naming each bad option if they do not validate
        (the route is broken, not the client's request, so the router fails over)."""
        given = {**route.provider.options, **route.options}
        if problems := validate(given):
            message = f"route {route.id} is misconfigured: {'; '.join(problems)}"
            raise UpstreamError(Failure(Kind.UPSTREAM_BROKEN, message))

        def paths(name: str, default: tuple[str, ...] = ()) -> tuple[Path, ...]:
            value = given.get(name, default)
            return jsonpath.compile_paths(value) if value else ()

        return cls(
            provider=route.provider.name, submit_path=given["submit_path"], body=given["body"],
            task_id=paths("task_id_path"), state=paths("state_path"),
            states={token(v): state for state, values in given["states"].items() for v in values},
            results=paths("result_paths"), submit_method=given.get("submit_method", "POST"),
            auth_header=given.get("auth_header", "Authorization"),
            auth_scheme=given.get("auth_scheme", "Bearer"),
            poll_method=given.get("poll_method", "GET"), poll_path=given.get("poll_path", ""),
            poll_url=paths("poll_url_path"), poll_body=given.get("poll_body"),
            error_message=paths("error_message_path", MESSAGE_PATHS),
            error_code=paths("error_code_path"), code=paths("code_path"),
            ok_codes=frozenset(token(v) for v in given.get("ok_codes", ())),
            error_kinds={k: Kind(v) for k, v in given.get("error_kinds", {}).items()},
            resolutions=dict(given.get("resolutions", {})),
            output_formats={**OUTPUT_FORMATS, **given.get("output_formats", {})},
            edit_aspect_ratio=given.get("edit_aspect_ratio", ""),
            inline_images=given.get("inline_images", False),
            callback_url=given.get("callback_url", ""),
            block_markers=tuple(given.get("content_block_markers", BLOCK_MARKERS)),
            **Pacing.given(given),
        )


def token(value: Any) -> str:
    """A state value or code as text, so 4 in route data matches "4" in a reply and back."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def placeholders(template: Any) -> set[str]:
    """Every "{name}" in a template's strings, at any depth."""
    if isinstance(template, dict):
        return {name for item in template.values() for name in placeholders(item)}
    if isinstance(template, list):
        return {name for item in template for name in placeholders(item)}
    return set(PLACEHOLDER.findall(template)) if isinstance(template, str) else set()


def validate(options: Mapping[str, Any]) -> list[str]:
    """Every problem with a task route's options (provider options merged with the route's),
    each naming its option as `options.<name>`; an empty list means usable."""
    problems = [f"options.{name}: unknown option" for name in options if name not in KNOWN]
    problems += [f"options.{name}: required" for name in REQUIRED if name not in options]
    if "poll_path" not in options and "poll_url_path" not in options:
        problems.append("options.poll_path: required (or options.poll_url_path)")
    return problems + _paths(options) + _templates(options) + _states(options) \
        + _scalars(options)


def _paths(options: Mapping[str, Any]) -> list[str]:
    problems = []
    for name in PATHS:
        if name in options:
            try:
                jsonpath.compile_paths(options[name])
            except (PathError, TypeError) as exc:
                problems.append(f"options.{name}: {exc}")
    return problems


def _templates(options: Mapping[str, Any]) -> list[str]:
    problems = []
    for name, fields, is_path in (("submit_path", {"model"}, True),
                                  ("poll_path", POLL_FIELDS, True),
                                  ("body", BODY_FIELDS, False), ("poll_body", POLL_FIELDS, False)):
        if name not in options:
            continue
        value = options[name]
        if is_path and not (isinstance(value, str) and value.startswith("/")):
            problems.append(f"options.{name}: must be a path starting with /")
        elif not is_path and not isinstance(value, dict):
            problems.append(f"options.{name}: must be a table")
        elif unknown := sorted(placeholders(value) - fields):
            problems.append(f"options.{name}: unknown placeholder {{{unknown[0]}}} "
                            f"(known: {', '.join(sorted(fields))})")
    if "poll_body" in options and options.get("poll_method", "GET") == "GET":
        problems.append("options.poll_body: needs poll_method = \"POST\"")
    return problems


def _states(options: Mapping[str, Any]) -> list[str]:
    states = options.get("states", {})
    if not isinstance(states, dict):
        return ["options.states: must be a table of pending/succeeded/failed lists"]
    problems = [f"options.states.{name}: unknown state (use {', '.join(STATES)})"
                for name in states if name not in STATES]
    seen: dict[str, str] = {}
    for name, values in states.items():
        if not isinstance(values, list) or not all(isinstance(v, str | int) for v in values):
            problems.append(f"options.states.{name}: must be a list of strings or numbers")
            continue
        for value in values:
            if token(value) in seen:
                problems.append(f"options.states.{name}: {value!r} is also "
                                f"{seen[token(value)]}")
            seen[token(value)] = name
    problems += [f"options.states.{name}: required" for name in ("succeeded", "failed")
                 if "states" in options and not states.get(name)]
    return problems


def _scalars(options: Mapping[str, Any]) -> list[str]:
    problems = []
    for name in NUMBERS:
        value = options.get(name, 1)
        least = 1 if name == "poll_backoff" else 0
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or value < least or (least == 0 and value == 0):
            what = "at least 1" if least else "a positive number"
            problems.append(f"options.{name}: must be {what}")
    problems += [f"options.{name}: must be text" for name in TEXTS
                 if not isinstance(options.get(name, ""), str)]
    problems += [f"options.{name}: must be one of {', '.join(allowed)}"
                 for name, allowed in METHODS.items()
                 if options.get(name, allowed[0]) not in allowed]
    if not isinstance(options.get("inline_images", False), bool):
        problems.append("options.inline_images: must be true or false")
    markers = options.get("content_block_markers", [])
    if not isinstance(markers, list) or not all(isinstance(m, str) for m in markers):
        problems.append("options.content_block_markers: must be a list of strings")
    return problems + _tables(options)


def _tables(options: Mapping[str, Any]) -> list[str]:
    problems = []
    for name in TABLES:
        table = options.get(name, {})
        if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
            problems.append(f"options.{name}: must be a table of strings")
    kinds = sorted(kind.value for kind in Kind)
    problems += [f"options.error_kinds.{code}: unknown failure kind {kind!r} "
                 f"(known: {', '.join(kinds)})"
                 for code, kind in _table(options, "error_kinds").items() if kind not in kinds]
    ok_codes = options.get("ok_codes", [])
    if not isinstance(ok_codes, list) or not all(isinstance(c, str | int) for c in ok_codes):
        problems.append("options.ok_codes: must be a list of strings or numbers")
    if "code_path" in options and not ok_codes:
        problems.append("options.ok_codes: required with options.code_path")
    return problems


def _table(options: Mapping[str, Any], name: str) -> dict[str, Any]:
    table = options.get(name, {})
    return table if isinstance(table, dict) else {}
