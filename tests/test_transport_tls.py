"""Lean connections over TLS (proxy.upstream.tls, transport) against the scripted server of
test_transport on https, with a throwaway CA made per test session (trustme): a verified
exchange, keep-alive, big and chunked bodies, and every way the handshake or the reply can go
wrong, each mapped to the class httpx's own error would get."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from proxy.catalog import Provider
from proxy.failures import Kind, UpstreamError
from proxy.providers import ADAPTERS
from proxy.upstream import clients, tls, transport
from tests.test_transport import (
    LIMITS,
    chunked,
    close_after,
    lean,
    post,
    reply,
    run,
    send_call,
    upstream,
)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    """A server that would rather speak h2: the client must leave it no choice."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(names or ("127.0.0.1",))).configure_cert(context)
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


@pytest.fixture
def server(ca: trustme.CA) -> ssl.SSLContext:
    return server_context(ca)


@pytest.fixture
def trusting(ca_file: str) -> ssl.SSLContext:
    return tls.ca_context(ca_file)


def test_a_verified_exchange_keeps_its_connection(server: ssl.SSLContext,
                                                  trusting: ssl.SSLContext) -> None:
    async def main() -> None:
        async with upstream(reply(b'{"a":1}'), reply(b'{"b":2}'), reply(b"3"), tls=server) \
                as fake, lean(tls=trusting) as pool:
            bodies = [(await post(pool, fake.url)).body for _ in range(3)]
            assert bodies == [b'{"a":1}', b'{"b":2}', b"3"]
            assert (fake.connections, fake.alpn) == (1, ["http/1.1"])
            head = fake.requests[0].head.decode().lower()
            assert f"host: {fake.url[8:]}" in head.split("\r\n")
            assert "accept-encoding: gzip, deflate" in head  # what httpx offers over https
    run(main())


@pytest.mark.parametrize("size", [200_000, 5_000_000])
def test_a_big_body_arrives_whole(size: int, server: ssl.SSLContext,
                                  trusting: ssl.SSLContext) -> None:
    body = bytes(range(256)) * (size // 256)

    async def main() -> None:
        async with upstream(reply(body), reply(b"next"), tls=server) as fake, \
                lean(tls=trusting) as pool:
            got = await post(pool, fake.url, body=b"u" * 300_000)  # a big request too
            assert (got.status, got.body, got.reusable) == (200, body, True)
            assert fake.requests[0].body == b"u" * 300_000
            assert (await post(pool, fake.url)).body == b"next"
            assert fake.connections == 1
    run(main())


def test_chunked_and_compressed_replies(server: ssl.SSLContext,
                                        trusting: ssl.SSLContext) -> None:
    async def main() -> None:
        parts = [b"x" * 70_000, b"y" * 3, b"z" * 1_000_000]
        packed = gzip.compress(b'{"big": true}')
        answers = (chunked(*parts, trailer=b"x-sum: 9\r\n"),
                   reply(packed, extra=b"content-encoding: gzip\r\n"))
        async with upstream(*answers, tls=server) as fake, lean(tls=trusting) as pool:
            got = await post(pool, fake.url)
            assert got.body == b"".join(parts) and got.reusable
            assert (await post(pool, fake.url)).body == b'{"big": true}'
            assert fake.connections == 1
    run(main())


def fallback_calls(client: transport.Client) -> list[httpx.Request]:
    """Swap httpx's transport for one that records what reaches it."""
    calls: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, content=b"{}")

    client.lean.fallback = httpx.MockTransport(record)  # type: ignore[assignment]
    return calls


@contextlib.asynccontextmanager
async def client_for(context: ssl.SSLContext | None) -> AsyncIterator[transport.Client]:
    client = transport.Client(LIMITS, httpx.Timeout(5.0), context)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.mark.parametrize("case", ["untrusted CA", "wrong host"])
def test_a_certificate_that_does_not_verify_fails_the_call(case: str, ca: trustme.CA,
                                                           trusting: ssl.SSLContext) -> None:
    """Classified as httpx classifies it (ConnectError: nothing was sent, try elsewhere),
    and never retried on httpx's transport or any other."""
    if case == "untrusted CA":
        cert_server = server_context(trustme.CA())
    else:
        cert_server = server_context(ca, "switchyard.test")

    async def main() -> None:
        async with upstream(reply(), tls=cert_server) as fake, client_for(trusting) as client:
            calls = fallback_calls(client)
            with pytest.raises(UpstreamError) as caught:
                await clients.send(client, send_call(fake.url), 5.0)
            assert caught.value.failure.kind is Kind.OVERLOADED
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await post(client.lean, fake.url)
            await asyncio.sleep(0.05)
            assert (fake.requests, calls, client.lean._idle) == ([], [], {})
    run(main())


@pytest.mark.parametrize("abrupt", [False, True])
def test_a_server_closing_mid_body_is_upstream_broken(abrupt: bool, server: ssl.SSLContext,
                                                      trusting: ssl.SSLContext) -> None:
    """With close_notify or without (a bare TCP close): either way the body is short."""
    partial = reply(b"x" * 500_000)[:-200_000]

    async def cut(writer: asyncio.StreamWriter) -> None:
        writer.write(partial)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort() if abrupt else writer.close()

    async def main() -> None:
        async with upstream(cut, reply(b"again"), tls=server) as fake, \
                client_for(trusting) as client:
            with pytest.raises(UpstreamError) as caught:
                await clients.send(client, send_call(fake.url), 5.0)
            assert caught.value.failure.kind is Kind.UPSTREAM_BROKEN
            assert (await post(client.lean, fake.url)).body == b"again"
            assert fake.connections == 2
    run(main())


def test_a_close_delimited_reply_over_tls(server: ssl.SSLContext,
                                          trusting: ssl.SSLContext) -> None:
    async def main() -> None:
        raw = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + b"y" * 100_000
        async with upstream(close_after(raw), tls=server) as fake, lean(tls=trusting) as pool:
            got = await post(pool, fake.url)
            assert got.body == b"y" * 100_000 and not got.reusable
    run(main())


def test_silence_after_the_handshake_is_a_read_timeout(server: ssl.SSLContext,
                                                       trusting: ssl.SSLContext) -> None:
    """The short deadline goes to a call on a connection whose handshake a first exchange has
    already done, so it times the silence alone, however slow the handshake was."""
    async def never(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async def main() -> None:
        async with upstream(reply(), never, tls=server) as fake, \
                client_for(trusting) as client:
            assert (await clients.send(client, send_call(fake.url), 5.0)).status == 200
            started = asyncio.get_running_loop().time()
            with pytest.raises(UpstreamError) as caught:
                await clients.send(client, send_call(fake.url), 0.2)
            assert caught.value.failure.kind is Kind.TIMEOUT
            assert "ReadTimeout" in caught.value.failure.message
            assert fake.connections == 1  # the timed call reused it: no handshake in 0.2 s
            assert asyncio.get_running_loop().time() - started < 4.0  # not the 5 s silence
    run(main())


def test_a_stalled_handshake_is_a_connect_timeout(trusting: ssl.SSLContext) -> None:
    writers: list[asyncio.StreamWriter] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)  # TCP accepted, and never a ServerHello

    async def main() -> None:
        listener = await asyncio.start_server(mute, "127.0.0.1", 0)
        url = f"https://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
        async with client_for(trusting) as client:
            started = asyncio.get_running_loop().time()
            with pytest.raises(UpstreamError) as caught:
                await clients.send(client, send_call(url), 0.2)
            assert caught.value.failure.kind is Kind.TIMEOUT
            assert "ConnectTimeout" in caught.value.failure.message
            assert asyncio.get_running_loop().time() - started < 1.0
        listener.close()
        for writer in writers:
            writer.close()
        await listener.wait_closed()
    run(main())


def test_a_cancelled_call_closes_its_tls_connection(server: ssl.SSLContext,
                                                    trusting: ssl.SSLContext) -> None:
    async def late(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.3)
        writer.write(reply(b"late"))
        await writer.drain()

    async def main() -> None:
        async with upstream(late, reply(b"fresh"), tls=server) as fake, \
                lean(tls=trusting) as pool:
            task = asyncio.create_task(post(pool, fake.url))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.05)
            assert fake.readers[0].at_eof()
            assert (await post(pool, fake.url)).body == b"fresh"
            assert fake.connections == 2
    run(main())


def test_multipart_through_httpx_goes_lean_over_tls(server: ssl.SSLContext,
                                                    trusting: ssl.SSLContext) -> None:
    async def main() -> None:
        async with upstream(reply(b'{"ok":1}'), tls=server) as fake, \
                client_for(trusting) as client:
            calls = fallback_calls(client)
            response = await client.post(fake.url + "/v1/images/edits", data={"n": "1"},
                                         files=[("image", ("a.png", b"PNGDATA", "image/png"))])
            assert response.content == b'{"ok":1}' and calls == []
            assert b"PNGDATA" in fake.requests[0].body and fake.alpn == ["http/1.1"]
    run(main())


# --- the contexts and build_clients --------------------------------------------------------


def test_the_default_context_is_httpx_default() -> None:
    ours, theirs = tls.default_context({}), httpx.create_ssl_context(trust_env=False)
    assert ours is not None
    assert (ours.verify_mode, ours.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert ours.get_ca_certs() == theirs.get_ca_certs() and len(ours.get_ca_certs()) > 50
    for name in tls.CA_ENV:
        assert tls.default_context({name: "/etc/my-ca.pem"}) is None


def https_provider(url: str, **options: str) -> Provider:
    return Provider(name="h", protocol="openai_images", base_url=url + "/v1", timeout_s=5,
                    max_in_flight=2, options=options)


@pytest.fixture
def no_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                 "all_proxy", *tls.CA_ENV):
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch


def test_build_clients_trusts_certifi_or_a_provider_ca(
        server: ssl.SSLContext, ca_file: str, no_environment: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        async with upstream(reply(b"1"), reply(b"2"), tls=server) as fake:
            plain = clients.build_clients((https_provider(fake.url),), ADAPTERS, 1.0)["h"]
            own = clients.build_clients((https_provider(fake.url, ca_file=ca_file),), ADAPTERS,
                                      1.0)["h"]
            assert isinstance(plain, transport.Client) and isinstance(own, transport.Client)
            with pytest.raises(UpstreamError):  # certifi does not know the test CA
                await clients.send(plain, send_call(fake.url), 5.0)
            assert (await clients.send(own, send_call(fake.url), 5.0)).body == b"1"
            no_environment.setenv("SSL_CERT_FILE", ca_file)  # httpx's way: https goes to httpx
            env = clients.build_clients((https_provider(fake.url),), ADAPTERS, 1.0)["h"]
            assert isinstance(env, transport.Client) and env.lean.tls is None
            assert (await clients.send(env, send_call(fake.url), 5.0)).body == b"2"
            for client in (plain, own, env):
                await client.aclose()
    run(main())


def test_a_ca_file_that_cannot_be_loaded_is_named(tmp_path: Path,
                                                  no_environment: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty.pem").write_text("")
    for path in (str(tmp_path / "missing.pem"), str(tmp_path / "empty.pem"), ""):
        with pytest.raises(ValueError, match=r"provider h: options\.ca_file"):
            clients.build_clients((https_provider("https://x", ca_file=path),), ADAPTERS, 1.0)


def test_a_ca_file_is_accepted_by_every_protocol_that_checks_its_options() -> None:
    """ca_file belongs to the transport: no protocol's option check calls it unknown."""
    from proxy.catalog import Capabilities, Model, Route
    from proxy.providers import check_routes

    routes = tuple(
        Route(id=f"m/{protocol}", model="m", upstream_model="x", price_per_image={},
              capabilities=Capabilities(tiers=("1K",), aspect_ratios=("1:1",)),
              provider=Provider(name=protocol, protocol=protocol, base_url="https://x",
                                options={"ca_file": "/etc/ssl/private-ca.pem"}))
        for protocol, adapter in ADAPTERS.items() if adapter.validate is not None)
    problems = check_routes([Model("m", (), "t", 0, "cheapest", routes)])
    assert not [p for p in problems if "ca_file" in p]
