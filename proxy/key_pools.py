"""Several keys for one provider (issue 22.1): each key is a host of its own to the router.

Teams hold several accounts or projects per host to multiply its rate limits. A provider's
`key_env` may name several environment variables, and each may hold several keys (separated by
commas or whitespace). Every key becomes a member of the provider's pool: a Provider of its
own, named `<provider>.<hash>` (six hex digits of the key's SHA-256: the key itself never
appears in a name, log line, metric or error), with its own health, Retry-After rest, breaker
and `max_in_flight` slots, and its own routes, since routing state is kept per route and per
provider. A key the host refuses (401, 403, quota exhausted) rests for a long while and the
others go on (routing/health.py); members that tie are taken least loaded first
(routing/strategies.py); an async job polls with the member, so the key, that submitted it.
`route.only` and `route.ignore` name the provider, not its members (`Provider.family`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from proxy.config import Secret

if TYPE_CHECKING:
    from proxy.catalog import Provider

_SEPARATORS = re.compile(r"[\s,]+")


class PoolError(ValueError):
    """A provider's key_env is neither a variable's name nor a list of them."""


def key_names(spec: Any, where: str) -> tuple[str, ...]:
    """The environment variables a provider's `key_env` names (none, one or several)."""
    if spec is None or spec == "":
        return ()
    if isinstance(spec, str):
        return (spec,)
    if isinstance(spec, list) and spec and all(isinstance(n, str) and n for n in spec):
        return tuple(spec)
    raise PoolError(f"{where}: key_env must be an environment variable's name or a list of "
                    f"them")


def keys(names: tuple[str, ...], env: Mapping[str, str]) -> tuple[Secret, ...]:
    """Every key those variables hold, in order, each once."""
    found: dict[str, None] = {}
    for name in names:
        for key in _SEPARATORS.split(env.get(name, "").strip()):
            if key:
                found.setdefault(key)
    return tuple(Secret(key) for key in found)


def label(key: Secret) -> str:
    """A key's short public name: enough to tell a pool's keys apart, nothing to guess by."""
    return hashlib.sha256(key.reveal().encode()).hexdigest()[:6]


def members(provider: Provider) -> tuple[Provider, ...]:
    """The providers routing sees: the provider itself, or one per key of its pool."""
    if len(provider.pool_keys) < 2:
        return (provider,)
    return tuple(replace(provider, name=f"{provider.name}.{label(key)}", key=key,
                         pool=provider.name, pool_keys=())
                 for key in provider.pool_keys)
