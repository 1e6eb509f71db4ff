"""A small JSON path language: how route data says where a value sits in a host's reply.

    path     := segment ("." segment)*
    segment  := name index* ["|json"]
    index    := "[" integer "]" | "[*]"

- `name` is an object key: any characters but `.`, `[`, `]` and `|` (there is no escaping).
  It may be empty only before an index or `|json`, e.g. `[0].url` when the reply is a list.
- `[2]` takes one list element (`[-1]` the last), `[*]` every element.
- `|json` decodes a string that holds JSON text, and the path goes on inside it:
  `data.resultJson|json.resultUrls[*]`.

A path finds zero or more values. A missing key, an index out of range, a step into the wrong
type or `|json` on text that is not JSON finds nothing rather than raising, and null values are
never found: absence is for the caller to judge. Route data may give a list of paths as
alternatives; the first that finds anything wins.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson

_SEGMENT = re.compile(r"(?P<name>[^.\[\]|]*)(?P<indexes>(?:\[(?:-?\d+|\*)\])*)(?P<json>\|json)?")
_INDEX = re.compile(r"\[(-?\d+|\*)\]")


class Op(Enum):
    ALL = "[*]"
    JSON = "|json"


Step = str | int | Op  # a key, a list index, or an operation


class PathError(ValueError):
    """A path that does not parse; the message quotes it and says why."""


@dataclass(frozen=True, slots=True)
class Path:
    text: str
    steps: tuple[Step, ...]

    def find(self, document: Any) -> list[Any]:
        """Every value the path reaches in `document`, in document order, nulls left out."""
        values = [document]
        for step in self.steps:
            values = [found for value in values for found in _step(value, step)]
        return [value for value in values if value is not None]


def compile_path(text: str) -> Path:
    """Parse one path; PathError if it is not in the syntax above."""
    if not isinstance(text, str) or not text:
        raise PathError(f"{text!r}: a path is a non-empty string")
    steps: list[Step] = []
    for segment in text.split("."):
        match = _SEGMENT.fullmatch(segment)
        if not segment or match is None:
            raise PathError(f"{text!r}: cannot read segment {segment!r}")
        name, indexes, json = match.group("name", "indexes", "json")
        if not (name or indexes or json):
            raise PathError(f"{text!r}: empty segment")
        if name:
            steps.append(name)
        for index in _INDEX.findall(indexes):
            steps.append(Op.ALL if index == "*" else int(index))
        if json:
            steps.append(Op.JSON)
    return Path(text, tuple(steps))


def compile_paths(value: str | Sequence[str]) -> tuple[Path, ...]:
    """One path, or a list of alternatives tried in order."""
    texts = [value] if isinstance(value, str) else list(value)
    if not texts:
        raise PathError("an empty list of paths")
    return tuple(compile_path(text) for text in texts)


def find(paths: Sequence[Path], document: Any) -> list[Any]:
    """The values of the first alternative that finds any."""
    for path in paths:
        if found := path.find(document):
            return found
    return []


def first(paths: Sequence[Path], document: Any) -> Any:
    """The first value the alternatives find, or None."""
    found = find(paths, document)
    return found[0] if found else None


def _step(value: Any, step: Step) -> list[Any]:
    if isinstance(step, str):
        return [value[step]] if isinstance(value, dict) and step in value else []
    if isinstance(step, int):
        inside = isinstance(value, list) and -len(value) <= step < len(value)
        return [value[step]] if inside else []
    if step is Op.ALL:
        return list(value) if isinstance(value, list) else []
    if not isinstance(value, str | bytes):
        return []
    try:
        return [orjson.loads(value)]
    except orjson.JSONDecodeError:
        return []
