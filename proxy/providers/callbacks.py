"""Callbacks instead of polling: a per-attempt, unguessable URL on Switchyard that a host calls
when its job is done, waking the flow that waits for it.

A callback is only ever a wake-up call: the flow then fetches the result from the host's API
as it would after a poll, so a forged, replayed or partly signed body can never inject a
result. Signatures are still checked where the host signs (a bad one is refused), so that
strangers cannot make Switchyard poll. Polling stays the fallback: a flow with a callback
polls rarely instead of never, so a callback that never arrives costs time, not the request.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field

# While a callback is expected, poll at most this often (the callback usually comes first).
FALLBACK_POLL_S = 15.0


@dataclass
class _Ticket:
    provider: str
    woken: asyncio.Event = field(default_factory=asyncio.Event)


class Callbacks:
    """The open callback tickets of this process, by token; built once in the lifespan."""

    def __init__(self, public_base_url: str | None,
                 fallback_poll_s: float = FALLBACK_POLL_S) -> None:
        self._base = public_base_url.rstrip("/") if public_base_url else None
        self._tickets: dict[str, _Ticket] = {}
        self.fallback_poll_s = fallback_poll_s

    @property
    def enabled(self) -> bool:
        """Hosts can reach us only at a public base URL the operator configured."""
        return self._base is not None

    def open(self, provider: str) -> tuple[str, str]:
        """A new ticket: (token, the URL to hand the host)."""
        token = secrets.token_urlsafe(24)
        self._tickets[token] = _Ticket(provider)
        return token, f"{self._base}/callbacks/{provider}/{token}"

    def close(self, token: str) -> None:
        self._tickets.pop(token, None)

    def provider_of(self, token: str) -> str | None:
        ticket = self._tickets.get(token)
        return ticket.provider if ticket else None

    def wake(self, token: str) -> bool:
        """The host says the job moved on; False if no flow here waits for this token."""
        ticket = self._tickets.get(token)
        if ticket is None:
            return False
        ticket.woken.set()
        return True

    async def wait(self, token: str, seconds: float) -> bool:
        """Sleep until woken or `seconds` pass; True if woken. The flag is then reset, so
        the next wait needs a new callback (hosts may call more than once)."""
        ticket = self._tickets.get(token)
        if ticket is None:
            await asyncio.sleep(seconds)
            return False
        try:
            await asyncio.wait_for(ticket.woken.wait(), seconds)
        except TimeoutError:
            return False
        ticket.woken.clear()
        return True
