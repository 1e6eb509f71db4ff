"""Short-lived upstream credentials: bearer tokens printed by an operator's command, cached.

A provider whose options carry `token_command` (e.g. `gcloud auth print-access-token`) gets its
key from that command instead of an environment variable. The token is kept until shortly
before it expires and fetched again; it is never logged, and a failing command's output (which
may hold secrets) never reaches an error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping

from proxy.catalog import Provider
from proxy.failures import Failure, Kind, UpstreamError

# Google access tokens live 3600 s; using one for 3000 s refreshes it ten minutes early.
DEFAULT_LIFETIME_S = 3000.0
COMMAND_TIMEOUT_S = 30.0


class TokenCommand:
    """Runs a shell command whose stdout is a bearer token; caches it for `lifetime_s`.

    Concurrent callers share one run of the command. `invalidate()` drops the cached token
    (after the upstream refused it) so the next call runs the command again.
    """

    def __init__(self, command: str, lifetime_s: float = DEFAULT_LIFETIME_S, *,
                 timeout_s: float = COMMAND_TIMEOUT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._command = command
        self._lifetime_s = lifetime_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._token: str | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return "TokenCommand(********)"

    async def token(self) -> str:
        async with self._lock:
            if self._token is None or self._clock() >= self._expires:
                started = self._clock()
                self._token = await self._run()
                self._expires = started + self._lifetime_s
            return self._token

    def invalidate(self) -> None:
        self._token = None

    async def _run(self) -> str:
        process = await asyncio.create_subprocess_shell(
            self._command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
        try:
            stdout, _ = await asyncio.wait_for(process.communicate(), self._timeout_s)
        except TimeoutError:
            # Its own session: the shell and whatever it started go together.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            raise UpstreamError(Failure(Kind.AUTH, f"the token command did not finish within "
                                                   f"{self._timeout_s:g} s")) from None
        if process.returncode != 0:
            raise UpstreamError(Failure(Kind.AUTH, f"the token command failed "
                                                   f"(exit status {process.returncode})"))
        token = stdout.decode("utf-8", "replace").strip()
        if not token or any(c.isspace() for c in token):
            raise UpstreamError(Failure(Kind.AUTH, "the token command did not print one token"))
        return token


class Credentials:
    """The token commands of a catalog's providers, by provider name; built once at startup."""

    def __init__(self, commands: Mapping[str, TokenCommand]) -> None:
        self._commands = dict(commands)

    @classmethod
    def for_providers(cls, providers: Iterable[Provider]) -> Credentials:
        """One TokenCommand per provider whose options have `token_command` (and optionally
        `token_lifetime_s`)."""
        return cls({
            p.name: TokenCommand(str(p.options["token_command"]),
                                 float(p.options.get("token_lifetime_s", DEFAULT_LIFETIME_S)))
            for p in providers if p.options.get("token_command")
        })

    def command(self, provider: str) -> TokenCommand | None:
        return self._commands.get(provider)

    def __repr__(self) -> str:
        return f"Credentials({sorted(self._commands)})"
