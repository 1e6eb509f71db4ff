"""Token commands with real shell commands: caching, expiry, failures that keep output secret."""

from __future__ import annotations

import asyncio
import logging
import shlex
import time
from pathlib import Path

import pytest

from proxy.catalog import Provider
from proxy.failures import Kind, UpstreamError
from proxy.upstream.credentials import Credentials, TokenCommand


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def counting(tmp_path: Path) -> str:
    """tok-1, tok-2, ... on successive runs; the count file says how often it ran."""
    counter = tmp_path / "count"
    counter.write_text("0")
    path = shlex.quote(str(counter))
    return f"n=$(($(cat {path}) + 1)); echo $n > {path}; echo \"  tok-$n  \""


def runs(tmp_path: Path) -> int:
    return int((tmp_path / "count").read_text())


def test_random_token_is_stripped_and_cached() -> None:
    # /bin/sh may be dash, which has no $RANDOM: the shell's pid differs per run instead.
    command = TokenCommand('echo "  tok-$$  "')

    async def twice() -> tuple[str, str]:
        return await command.token(), await command.token()

    first, second = asyncio.run(twice())
    assert first.startswith("tok-") and first[4:].isdigit()
    assert second == first


def test_token_is_refreshed_after_its_lifetime(tmp_path: Path) -> None:
    clock = Clock()
    command = TokenCommand(counting(tmp_path), lifetime_s=100, clock=clock)

    async def sequence() -> list[str]:
        tokens = [await command.token()]
        clock.now += 99
        tokens.append(await command.token())
        clock.now += 2
        tokens.append(await command.token())
        return tokens

    assert asyncio.run(sequence()) == ["tok-1", "tok-1", "tok-2"]
    assert runs(tmp_path) == 2


def test_concurrent_callers_share_one_run(tmp_path: Path) -> None:
    command = TokenCommand(counting(tmp_path) + "; sleep 0.2")

    async def together() -> list[str]:
        return list(await asyncio.gather(*(command.token() for _ in range(5))))

    assert asyncio.run(together()) == ["tok-1"] * 5
    assert runs(tmp_path) == 1


def test_invalidate_runs_the_command_again(tmp_path: Path) -> None:
    command = TokenCommand(counting(tmp_path))

    async def sequence() -> list[str]:
        first = await command.token()
        command.invalidate()
        return [first, await command.token()]

    assert asyncio.run(sequence()) == ["tok-1", "tok-2"]


@pytest.mark.parametrize(("shell", "message"), [
    ("echo sekrit-output; echo sekrit-stderr >&2; exit 3", "failed (exit status 3)"),
    ("true", "did not print one token"),
    ("echo sekrit one; echo two", "did not print one token"),
])
def test_failures_are_auth_and_never_show_output(shell: str, message: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(UpstreamError) as caught:
        asyncio.run(TokenCommand(shell).token())
    failure = caught.value.failure
    assert failure.kind is Kind.AUTH and message in failure.message
    assert "sekrit" not in str(caught.value) and "sekrit" not in caplog.text
    assert shell not in failure.message


def test_a_hanging_command_is_killed_at_its_timeout(tmp_path: Path) -> None:
    marker = tmp_path / "survived"
    command = TokenCommand(f"sleep 3; touch {shlex.quote(str(marker))}", timeout_s=0.2)
    started = time.monotonic()
    with pytest.raises(UpstreamError) as caught:
        asyncio.run(command.token())
    assert caught.value.failure.kind is Kind.AUTH
    assert "did not finish within 0.2 s" in caught.value.failure.message
    time.sleep(3.3 - (time.monotonic() - started))
    assert not marker.exists()  # the whole process group went, not only the shell


def test_a_failed_run_is_not_cached(tmp_path: Path) -> None:
    flag = tmp_path / "ok"
    command = TokenCommand(f"test -e {shlex.quote(str(flag))} && echo tok-ok")

    async def sequence() -> str:
        with pytest.raises(UpstreamError):
            await command.token()
        flag.touch()
        return await command.token()

    assert asyncio.run(sequence()) == "tok-ok"


def test_credentials_for_providers_take_only_token_commands() -> None:
    providers = [
        Provider("vertex-a", "vertex", "https://aiplatform.googleapis.com/v1",
                 options={"token_command": "echo tok-a", "token_lifetime_s": 600}),
        Provider("gemini", "gemini", "https://generativelanguage.googleapis.com/v1beta",
                 key_env="GEMINI_API_KEY"),
    ]
    credentials = Credentials.for_providers(providers)
    assert credentials.command("gemini") is None and credentials.command("nope") is None
    command = credentials.command("vertex-a")
    assert command is not None
    assert asyncio.run(command.token()) == "tok-a"
    assert "echo" not in repr(credentials) and "echo" not in repr(command)
