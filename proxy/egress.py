"""Where a tenant's webhook may go: the URL rules checked when a job is submitted, and the
address rules checked again when its webhook connects, against every address the host
resolves to (the connection then goes to the checked address, so DNS cannot switch it).

By default only public addresses are reachable, over https. The operator's allow-list
(config `callback_allow_cidrs`) opens networks on purpose, and only there is plain http
allowed. A refusal's message names no secret: it never repeats the URL.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# host, port -> every address the host resolves to
Resolve = Callable[[str, int], Awaitable[Sequence[IPAddress]]]

MAX_URL = 2048
_PORTS = {"https": 443, "http": 80}
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
# A last label like these makes the host an IPv4 address in some form (127.1, 2130706433,
# 0x7f000001, 0177.0.0.1), as browsers and resolvers read it.
_NUMERIC = re.compile(r"[0-9]+|0x[0-9a-f]*")
_LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Not for the public internet, whatever this Python's ipaddress tables say (they have
# changed between releases): shared address space, IETF assignments, benchmarking, local
# NAT64, site-local, Teredo and other IETF IPv6 blocks, documentation.
_SPECIAL = tuple(ipaddress.ip_network(net) for net in (
    "100.64.0.0/10", "192.0.0.0/24", "198.18.0.0/15", "64:ff9b:1::/48", "fec0::/10",
    "2001::/23", "2001:db8::/32"))

HTTPS_ONLY = "'callback_url' must be an https URL"
NOT_PUBLIC = ("'callback_url' must point to a public address, not a loopback, private, "
              "link-local, multicast or reserved one")


class Refused(ValueError):
    """A callback URL or address Switchyard does not send to; the message says why."""


@dataclass(frozen=True, slots=True)
class Target:
    """A callback URL that passed the URL rules."""

    url: str
    secure: bool  # https
    host: str  # lower case, without brackets
    port: int
    address: IPAddress | None  # the host as an address, when it is one (in any form)

    @property
    def authority(self) -> str:
        """The Host header: the host as written, and the port unless it is the default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = _PORTS["https" if self.secure else "http"]
        return host if self.port == default else f"{host}:{self.port}"


def parse(url: object) -> Target:
    """The URL rules: http(s), printable ASCII, no user info, a valid port and host."""
    if not isinstance(url, str) or not url:
        raise Refused(HTTPS_ONLY)
    if len(url) > MAX_URL or not url.isascii() or not url.isprintable() or \
            any(c in url for c in " \\"):
        raise Refused(f"'callback_url' must be at most {MAX_URL} printable ASCII characters, "
                      "without spaces or backslashes (percent-encode the rest)")
    try:
        parts = urlsplit(url)
        port = parts.port
        httpx.URL(url)  # what the sender will parse: anything it refuses is refused now
    except (ValueError, httpx.InvalidURL):
        raise Refused("'callback_url' is not a valid URL (host and port)") from None
    scheme = parts.scheme.lower()
    if scheme not in _PORTS or not parts.hostname:
        raise Refused(HTTPS_ONLY)
    if "@" in parts.netloc:
        raise Refused("'callback_url' must not carry a user name or password")
    if port == 0:
        raise Refused("'callback_url' has an invalid port: use 1 to 65535")
    bracketed = parts.netloc.rpartition("@")[2].startswith("[")
    return Target(url, scheme == "https", parts.hostname, port or _PORTS[scheme],
                  _address(parts.hostname, bracketed))


def _address(host: str, bracketed: bool) -> IPAddress | None:
    """The host as an address if it is one, in any form; None for a name."""
    if bracketed:
        try:
            if "%" in host:  # a zone (fe80::1%eth0) names this machine's interface
                raise ValueError(host)
            return ipaddress.IPv6Address(host)
        except ValueError:
            raise Refused("'callback_url' has an invalid IPv6 address") from None
    name = host.removesuffix(".")
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise Refused("'callback_url' has an invalid host name")
    if not _NUMERIC.fullmatch(labels[-1]):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(name))
    except OSError:
        raise Refused("'callback_url' has an invalid IPv4 address") from None


def embedded(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries and reaches (IPv4-mapped, NAT64, 6to4)."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def unmapped(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address as the IPv4 address it is; any other as it is."""
    inner = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return inner or address


def public(address: IPAddress) -> bool:
    """Reachable on the public internet: not loopback, private, link-local, multicast,
    reserved, unspecified or special-purpose, nor an IPv6 form of such an IPv4 address."""
    inner = embedded(address)
    if inner is not None:
        return public(inner)
    return address.is_global and not (
        address.is_multicast or address.is_reserved or address.is_private or
        address.is_loopback or address.is_link_local or address.is_unspecified or
        any(address in net for net in _SPECIAL if net.version == address.version))


@dataclass(frozen=True, slots=True)
class Policy:
    """The operator's allow-list on top of the public internet."""

    allow: tuple[Network, ...] = ()

    def check_url(self, url: object) -> Target:
        """The submit-time check: the URL rules, and the address rules for a host that is an
        address (or a `localhost` name, which is loopback by definition). A host name is
        checked when the webhook connects, against what it resolves to then."""
        target = parse(url)
        name = target.host.removesuffix(".")
        if target.address is not None:
            self.check_address(target.address, target.secure)
        elif name == "localhost" or name.endswith(".localhost"):
            self.check_address(_LOOPBACK, target.secure)
        elif not target.secure and not self.allow:
            raise Refused(HTTPS_ONLY)
        return target

    def check_address(self, address: IPAddress, secure: bool) -> None:
        """An address may be connected to: allowed by the operator, or public over https."""
        plain = unmapped(address)
        if any(plain in net for net in self.allow if net.version == plain.version):
            return
        if not secure:
            raise Refused(HTTPS_ONLY + " (plain http only to networks the operator allows)")
        if not public(address):
            raise Refused(NOT_PUBLIC)

    async def pinned(self, target: Target, resolve: Resolve) -> IPAddress:
        """The connect-time check: the address to connect to, after checking every address
        the host resolves to (one refused address refuses the host)."""
        found = [target.address] if target.address is not None else \
            await resolve(target.host, target.port)
        if not found:
            raise OSError(f"no address for the callback host {target.host}")
        for address in found:
            self.check_address(address, target.secure)
        return unmapped(found[0])


def allow_list(raw: object) -> tuple[Network, ...]:
    """Networks from a comma-separated string or a list of CIDRs; ValueError if one is not
    a network (host bits set included: `10.0.0.1/8` is a typo, not a network)."""
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple):
        raise ValueError("not a list of networks")
    return tuple(ipaddress.ip_network(str(item).strip()) for item in items if str(item).strip())


class Resolver:
    """Host names to addresses on threads of its own: a slow DNS server holds these, never
    the default executor that database calls run on."""

    def __init__(self, threads: int = 8) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="switchyard-resolve")

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        loop = asyncio.get_running_loop()
        infos = await loop.run_in_executor(self._pool, lambda: socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM))
        found: list[IPAddress] = []
        for *_, sockaddr in infos:
            address = ipaddress.ip_address(str(sockaddr[0]))
            if address not in found:
                found.append(address)
        return found

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
