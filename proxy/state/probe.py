"""What `switchyard routes list` says of the state replicas share: the mode, and in fleet mode
whether Redis answers now, so an operator sees a fleet that would run on its own limits."""

from __future__ import annotations

import time
from urllib.parse import unquote_plus, urlsplit

from proxy.config import Config

TIMEOUT_S = 1.0


def mode_line(config: Config) -> str:
    if config.redis_url is None:
        return ("Mode: single process (limits, host slots and route health in memory; "
                "redis_url with a PostgreSQL database_url makes a fleet)")
    url = config.redis_url.reveal()
    shown = f"Redis at {without_password(url)} (prefix {config.redis_prefix!r})"
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=TIMEOUT_S,
                                      socket_connect_timeout=TIMEOUT_S)
        started = time.perf_counter()
        client.ping()
        took_ms = (time.perf_counter() - started) * 1000
        client.close()
    except (redis.RedisError, OSError) as exc:
        return (f"Mode: fleet; {shown} does not answer ({type(exc).__name__}): each replica "
                f"runs on its own limits, host slots and route health until it does")
    return (f"Mode: fleet; {shown} answers in {took_ms:.1f} ms: limits, host slots and "
            f"route health are the fleet's")


def without_password(url: str) -> str:
    """The URL to print: a password in it becomes *** (redis-py takes one from the query
    string, `?password=`, as well as from user:password@)."""
    parts = urlsplit(url)
    query = "&".join(f"{name}=***" if unquote_plus(name).lower() == "password"
                     else f"{name}{eq}{value}"
                     for name, eq, value in (item.partition("=")
                                             for item in parts.query.split("&") if item))
    parts = parts._replace(query=query)
    if parts.password is not None:
        user = parts.username or ""
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        parts = parts._replace(netloc=f"{user}:***@{host}{port}")
    return parts.geturl()
