"""proxy.egress: which callback URLs and addresses a tenant's webhook may reach. Refused at
submit: control characters, bad ports and IPv6 literals, user info, other schemes, and
internal targets in every numeric form; a name is checked at connect time against every
address it resolves to. The operator's allow-list opens networks on purpose."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence

import pytest

from proxy.egress import (
    HTTPS_ONLY,
    NOT_PUBLIC,
    IPAddress,
    Policy,
    Refused,
    Resolve,
    Target,
    allow_list,
    parse,
    public,
)

DEFAULT = Policy()
LOOPBACK = Policy(allow_list("127.0.0.0/8"))


@pytest.mark.parametrize(("url", "why"), [
    ("https://localhost/\x7fhook", "printable ASCII"),
    ("https://hooks.example.com/\thook", "printable ASCII"),
    ("https://hooks.example.com/\x00", "printable ASCII"),
    ("https://hooks.example.com/\x01", "printable ASCII"),
    ("https://hooks.example.com/a b", "printable ASCII"),
    ("https://hooks.example.com/ü", "printable ASCII"),
    ("https://hooks.example.com\\@127.0.0.1/", "printable ASCII"),
    ("https://hooks.example.com/" + "a" * 2048, "printable ASCII"),
    ("https://[::1/", "not a valid URL"),
    ("https://hooks.example.com:65536/", "not a valid URL"),
    ("https://hooks.example.com:+443/", "not a valid URL"),
    ("https://hooks.example.com:0/", "invalid port"),
    ("https://user:pw@hooks.example.com/", "user name or password"),
    ("https://@hooks.example.com/", "user name or password"),
    ("https://[fe80::1%25eth0]/", "invalid IPv6"),
    ("https://[v1.x]/", "not a valid URL"),
    ("https://1.2.3.4.5/", "invalid IPv4"),
    ("https://hooks.1/", "invalid IPv4"),
    ("https://hooks%2eexample.com/", "invalid host name"),
    ("https://hooks..example.com/", "invalid host name"),
    ("ftp://hooks.example.com/", HTTPS_ONLY),
    ("http://hooks.example.com/", HTTPS_ONLY),
    ("https:///hooks", HTTPS_ONLY),
    ("", HTTPS_ONLY),
    (42, HTTPS_ONLY),
])
def test_bad_urls_are_refused_saying_why(url: object, why: str) -> None:
    with pytest.raises(Refused, match=r"^'callback_url' ") as refused:
        DEFAULT.check_url(url)
    assert why in str(refused.value)
    assert "hook" not in str(refused.value).removeprefix("'callback_url'")  # no echo


@pytest.mark.parametrize("url", [
    "https://127.0.0.1", "https://2130706433", "https://0x7f000001", "https://127.1",
    "https://0x7f.1/", "https://127.0.0.1./", "https://[::ffff:127.0.0.1]", "https://[::1]/",
    "https://[::]/", "https://0.0.0.0/", "https://0/", "https://[::7f00:1]/",
    "https://[64:ff9b::7f00:1]/", "https://[64:ff9b::a00:1]/", "https://[2002:7f00:1::]/",
    "https://[2002:a00:1::]/", "https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",
    "https://10.0.0.1/", "https://167772161/", "https://172.16.0.1/", "https://192.168.1.1/",
    "https://169.254.169.254/latest/meta-data", "https://100.64.0.1/", "https://192.0.0.8/",
    "https://198.18.0.1/", "https://224.0.0.1/", "https://239.255.255.250/",
    "https://240.0.0.1/", "https://255.255.255.255/", "https://[fe80::1]/",
    "https://[fc00::1]/", "https://[fec0::1]/", "https://[ff02::1]/", "https://[ff0e::1]/",
    "https://[2001:db8::1]/", "https://localhost/", "https://LOCALHOST./",
    "https://hooks.localhost:8443/",
])
def test_internal_targets_are_refused_in_every_form(url: str) -> None:
    with pytest.raises(Refused) as refused:
        DEFAULT.check_url(url)
    assert str(refused.value) == NOT_PUBLIC


@pytest.mark.parametrize(("url", "host", "port", "authority"), [
    ("https://hooks.example.com/a?b=1#c", "hooks.example.com", 443, "hooks.example.com"),
    ("https://Hooks.Example.com:8443/", "hooks.example.com", 8443, "hooks.example.com:8443"),
    ("https://8.8.8.8:1/x", "8.8.8.8", 1, "8.8.8.8:1"),
    ("https://134744072/", "134744072", 443, "134744072"),  # 8.8.8.8, written as one number
    ("https://[2606:4700::1111]:65535/", "2606:4700::1111", 65535, "[2606:4700::1111]:65535"),
    ("https://[64:ff9b::808:808]/", "64:ff9b::808:808", 443, "[64:ff9b::808:808]"),
    ("https://[2002:808:808::]/", "2002:808:808::", 443, "[2002:808:808::]"),
    ("https://my_hooks.example.com/", "my_hooks.example.com", 443, "my_hooks.example.com"),
])
def test_public_https_targets_on_any_port_pass(url: str, host: str, port: int,
                                               authority: str) -> None:
    target = DEFAULT.check_url(url)
    assert (target.url, target.host, target.port, target.authority) == (
        url, host, port, authority)


def test_the_allow_list_opens_its_networks_on_purpose_and_plain_http_only_there() -> None:
    for url in ("https://127.0.0.1:9/", "http://127.0.0.1:9/", "http://2130706433/",
                "http://localhost:8080/hooks", "https://[::ffff:127.0.0.1]/"):
        assert LOOPBACK.check_url(url).url == url
    for url in ("https://[::1]/", "https://10.0.0.1/", "http://10.0.0.1/"):
        with pytest.raises(Refused):
            LOOPBACK.check_url(url)
    with pytest.raises(Refused, match="plain http only to networks the operator allows"):
        LOOPBACK.check_url("http://8.8.8.8/")
    # A name's address is known at connect time only: with an allow-list, plain http to a
    # name is taken now and checked then.
    assert LOOPBACK.check_url("http://hooks.internal/").host == "hooks.internal"


@pytest.mark.parametrize(("address", "expected"), [
    ("8.8.8.8", True), ("2606:4700::1111", True), ("::ffff:8.8.8.8", True),
    ("64:ff9b::808:808", True), ("2002:808:808::1", True),
    ("127.0.0.1", False), ("::ffff:10.0.0.1", False), ("64:ff9b::c0a8:101", False),
    ("2002:c0a8:101::1", False), ("100.64.0.1", False), ("224.0.0.251", False),
])
def test_public_judges_ipv6_forms_by_the_ipv4_address_they_carry(address: str,
                                                                  expected: bool) -> None:
    assert public(ipaddress.ip_address(address)) is expected


def _resolver(table: dict[str, list[str]], calls: list[str]) -> Resolve:
    async def resolve(host: str, port: int) -> Sequence[IPAddress]:
        calls.append(host)
        return [ipaddress.ip_address(a) for a in table.get(host, [])]
    return resolve


def _pin(policy: Policy, target: Target, table: dict[str, list[str]]) -> IPAddress:
    return asyncio.run(policy.pinned(target, _resolver(table, [])))


def test_a_name_is_checked_at_connect_against_every_address_it_resolves_to() -> None:
    table = {"hooks.example.com": ["8.8.8.8", "2606:4700::1111"],
             "rebound.example.com": ["8.8.8.8", "127.0.0.1"],
             "inside.example.com": ["10.1.2.3"], "mapped.example.com": ["::ffff:127.0.0.1"]}
    target = parse("https://hooks.example.com/")
    assert _pin(DEFAULT, target, table) == ipaddress.ip_address("8.8.8.8")
    for name in ("rebound", "inside", "mapped"):
        with pytest.raises(Refused, match=NOT_PUBLIC):
            _pin(DEFAULT, parse(f"https://{name}.example.com/"), table)
    # Opened on purpose: a mapped address is connected to as the IPv4 address it carries.
    assert _pin(LOOPBACK, parse("https://mapped.example.com/"), table) == \
        ipaddress.ip_address("127.0.0.1")
    with pytest.raises(Refused, match="plain http"):
        _pin(LOOPBACK, parse("http://hooks.example.com/"), table)
    with pytest.raises(OSError, match="no address"):
        _pin(DEFAULT, parse("https://nowhere.example.com/"), table)


def test_an_address_in_the_url_is_checked_again_at_connect_and_not_resolved() -> None:
    calls: list[str] = []
    stored = parse("https://2130706433/")  # stored before submit-time checks existed
    with pytest.raises(Refused):
        asyncio.run(DEFAULT.pinned(stored, _resolver({}, calls)))
    assert asyncio.run(LOOPBACK.pinned(stored, _resolver({}, calls))) == \
        ipaddress.ip_address("127.0.0.1")
    assert calls == []


def test_allow_lists_read_from_strings_and_lists() -> None:
    assert allow_list("10.0.0.0/8, 127.0.0.0/8,") == (ipaddress.ip_network("10.0.0.0/8"),
                                                      ipaddress.ip_network("127.0.0.0/8"))
    assert allow_list(["::1/128", "192.168.0.0/16"]) == (ipaddress.ip_network("::1/128"),
                                                         ipaddress.ip_network("192.168.0.0/16"))
    assert allow_list("") == ()
    for bad in ("10.0.0.1/8", "localhost", "10.0.0.0/33", 7):
        with pytest.raises(ValueError):
            allow_list(bad)
