"""Partial images relayed as a host streams them, through the official SDK
(`for event in client.images.generate(..., stream=True, partial_images=2)`), against a fake
OpenAI on a real socket that streams as OpenAI streams (tests/fakes/openai_stream.py).

Each test would fail on Switchyard before relaying: it never asked a host to stream, so no
partial image ever reached a client, a failure after one could not be told from one before,
and a client that left had no upstream stream to close."""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types import (
    ImageEditCompletedEvent,
    ImageEditPartialImageEvent,
    ImageGenCompletedEvent,
    ImageGenPartialImageEvent,
)

from proxy import catalog
from proxy.providers import ADAPTERS
from tests.conftest import Running, make_config, serve
from tests.fakes import openai_stream
from tests.fakes.openai_stream import KEY_ENV, MODEL, StreamHost, catalog_files, on_own_loop
from tests.surfaces import key_id, ledger, opened, picture

Scripts = dict[str, Sequence[str]]


@pytest.fixture(scope="module")
def host() -> Iterator[StreamHost]:
    fake = StreamHost()
    with on_own_loop(fake):
        yield fake


@contextlib.contextmanager
def switchyard(tmp_path: Path, host: StreamHost, scripts: Scripts
               ) -> Iterator[tuple[Running, openai.OpenAI]]:
    """A fresh Switchyard (fresh route health) in front of the fake hosts `a` (cheaper) and
    `b`, with `scripts`; the SDK pointed at it with a new key."""
    host.scripts, host.calls[:], host.sent[:], host.gates[:] = scripts, [], [], []
    routes = tmp_path / "routes"
    for name, text in catalog_files(host).items():
        (routes / name).parent.mkdir(parents=True, exist_ok=True)
        (routes / name).write_text(text)
    live = catalog.load(routes, {KEY_ENV: "sk-test"}, False, ADAPTERS)
    with serve(make_config(tmp_path / "data", routes_dir=routes), live) as running, \
            openai.OpenAI(base_url=running.v1, api_key=running.new_key(), max_retries=0,
                          timeout=30) as sdk:
        yield running, sdk


def rows(running: Running, sdk: openai.OpenAI, wait_s: float = 5.0) -> list[Any]:
    """The key's ledger rows, once there is one (a cancelled run writes its row as it ends)."""
    deadline = time.monotonic() + wait_s
    while True:
        found = [row for row in ledger(running) if row.key_id == key_id(running, sdk.api_key)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def test_partials_are_relayed_as_they_arrive(tmp_path: Path, host: StreamHost,
                                             validate: Callable[[str, Any], None]) -> None:
    """The fake sends partial 2 only after the client has partial 1 in hand."""
    with switchyard(tmp_path, host, {"a": ("partial", "gate", "partial", "completed")}) as (
            running, sdk):
        got = []
        for event in sdk.images.generate(model=MODEL, prompt="a fox", stream=True,
                                          partial_images=2):
            got.append(event)
            if len(got) == 1:
                host.open_gate()
        assert host.gates == ["opened"]  # not "timed out": partial 1 was not held back
        assert [type(event) for event in got] == [ImageGenPartialImageEvent] * 2 + [
            ImageGenCompletedEvent]
        assert [event.partial_image_index for event in got[:2]] == [0, 1]
        for event in got:
            assert base64.b64decode(event.b64_json).startswith(b"\x89PNG")
            data = event.model_dump(exclude_none=True)
            data.pop("switchyard", None)
            validate("ImageGenStreamEvent", data)
            validate("ImageGenPartialImageEvent" if event.type.endswith("partial_image")
                     else "ImageGenCompletedEvent", data)
        assert got[-1].usage.total_tokens == 100
        assert got[-1].model_extra and got[-1].model_extra["switchyard"]["provider"] == "stream-a"
        (call,) = host.calls
        assert call[1]["stream"] is True and call[1]["partial_images"] == 2
        (row,) = rows(running, sdk)
        assert (row.outcome, row.n_delivered, row.billed_micros) == ("success", 1, 10_000)


@pytest.mark.parametrize("failure", ["error", "drop"])
def test_a_failure_after_the_first_event_is_an_error_event_and_no_failover(
        tmp_path: Path, host: StreamHost, failure: str) -> None:
    with switchyard(tmp_path, host, {"a": ("partial", failure),
                                     "b": ("partial", "partial", "completed")}) as (running, sdk):
        got = []
        with pytest.raises(openai.APIError) as caught:
            for event in sdk.images.generate(model=MODEL, prompt="a fox", stream=True,
                                              partial_images=2):
                got.append(event)
        assert [type(event) for event in got] == [ImageGenPartialImageEvent]
        assert isinstance(caught.value.body, dict)
        assert caught.value.body["type"] == "upstream_error"
        assert [name for name, _ in host.calls] == ["a"]  # never b: the client saw a's drafts
        (row,) = rows(running, sdk)
        assert row.billed_micros == 0 and row.n_delivered == 0 and row.outcome != "success"


@pytest.mark.parametrize("failure", ["status:500", "drop"])
def test_a_failure_before_the_first_event_fails_over(tmp_path: Path, host: StreamHost,
                                                     failure: str) -> None:
    with switchyard(tmp_path, host, {"a": (failure,),
                                     "b": ("partial", "partial", "completed")}) as (running, sdk):
        got = list(sdk.images.generate(model=MODEL, prompt="a fox", stream=True,
                                       partial_images=2))
        assert [type(event) for event in got] == [ImageGenPartialImageEvent] * 2 + [
            ImageGenCompletedEvent]
        assert [name for name, _ in host.calls] == ["a", "b"]
        assert got[-1].model_extra and got[-1].model_extra["switchyard"]["provider"] == "stream-b"
        (row,) = rows(running, sdk)  # billed a's quote: the most a request is billed
        assert (row.outcome, row.provider, row.billed_micros) == ("success", "stream-b", 10_000)


def test_a_client_that_leaves_closes_the_upstream_stream_and_pays_nothing(
        tmp_path: Path, host: StreamHost) -> None:
    with switchyard(tmp_path, host, {"a": ("partial", "gate", "completed")}) as (running, sdk):
        stream = sdk.images.generate(model=MODEL, prompt="a fox", stream=True, partial_images=2)
        first = next(iter(stream))
        assert isinstance(first, ImageGenPartialImageEvent)
        stream.close()
        deadline = time.monotonic() + 5
        while not host.gates and time.monotonic() < deadline:
            time.sleep(0.02)
        assert host.gates == ["left"]  # the upstream connection was closed, not waited out
        (row,) = rows(running, sdk)
        assert (row.outcome, row.n_delivered, row.billed_micros) == ("cancelled", 0, 0)


def test_one_completed_event_per_image_after_the_partials(
        tmp_path: Path, host: StreamHost, validate: Callable[[str, Any], None]) -> None:
    with switchyard(tmp_path, host, {"a": ("partial", "completed", "completed")}) as (
            running, sdk):
        got = list(sdk.images.generate(model=MODEL, prompt="two foxes", n=2, stream=True,
                                       partial_images=1))
        assert [type(event) for event in got] == [ImageGenPartialImageEvent] + [
            ImageGenCompletedEvent] * 2
        for event in got[1:]:
            data = event.model_dump(exclude_none=True)
            data.pop("switchyard", None)
            validate("ImageGenCompletedEvent", data)
        (row,) = rows(running, sdk)
        assert (row.n_delivered, row.billed_micros) == (2, 20_000)


def test_an_edit_streams_image_edit_partials(tmp_path: Path, host: StreamHost,
                                             validate: Callable[[str, Any], None]) -> None:
    with switchyard(tmp_path, host, {"a": ("partial", "completed")}) as (_, sdk):
        got = list(sdk.images.edit(model=MODEL, prompt="add a hat", stream=True,
                                   partial_images=1,
                                   image=("in.png", picture(64, 64), "image/png")))
        assert [type(event) for event in got] == [ImageEditPartialImageEvent,
                                                  ImageEditCompletedEvent]
        validate("ImageEditPartialImageEvent", got[0].model_dump(exclude_none=True))
        (call,) = host.calls
        assert call[1]["stream"] is True and call[1]["partial_images"] == 1


def test_without_partial_images_the_host_is_not_asked_to_stream(
        tmp_path: Path, host: StreamHost) -> None:
    with switchyard(tmp_path, host, {"a": ("partial", "completed")}) as (_, sdk):
        got = list(sdk.images.generate(model=MODEL, prompt="a fox", stream=True))
        assert [type(event) for event in got] == [ImageGenCompletedEvent]
        assert "stream" not in host.calls[0][1]


def test_a_partial_that_is_not_an_image_is_not_relayed(
        tmp_path: Path, host: StreamHost, monkeypatch: pytest.MonkeyPatch) -> None:
    """A host's partial whose b64_json is not an image (its completed image is checked and
    would fail over) was relayed as it was, and committed the run to that host."""
    real = openai_stream._event

    def junk(kind: str, step: str, partials: Iterator[int]) -> bytes:
        if step != "junk":
            return real(kind, step, partials)
        head, _, rest = real(kind, "partial", partials).partition(b'"b64_json":"')
        return head + b'"b64_json":"' + base64.b64encode(b"<html>oops</html>") + b'"' + \
            rest.partition(b'"')[2]

    monkeypatch.setattr(openai_stream, "_event", junk)
    with switchyard(tmp_path, host, {"a": ("junk", "completed"),
                                     "b": ("partial", "completed")}) as (_, sdk):
        events = list(sdk.images.generate(model=MODEL, prompt="a fox", stream=True,
                                          partial_images=1))
    assert [event.type for event in events] == ["image_generation.completed"]
    assert opened(base64.b64decode(events[-1].b64_json))
