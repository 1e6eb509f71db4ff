"""The lean transport's pool and its place in the clients: connection limits, idle connections
the server closed or that grew old, httpx's own entry (multipart uploads), the fallback for
what lean connections may not carry, and which providers get lean clients at all (TLS:
test_transport_tls)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from proxy.catalog import Provider
from proxy.providers import ADAPTERS
from proxy.upstream import clients as upstream_clients
from proxy.upstream import transport
from tests.test_transport import LIMITS, lean, post, reply, run, upstream

ONE = httpx.Limits(max_connections=1, max_keepalive_connections=1)


def slow(seconds: float, body: bytes = b"slow") -> object:
    async def script(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(seconds)
        writer.write(reply(body))
        await writer.drain()
    return script


def test_a_busy_pool_makes_the_next_call_wait() -> None:
    async def main() -> None:
        async with upstream(slow(0.2, b"a"), reply(b"b")) as fake, lean(ONE) as pool:
            first = asyncio.create_task(post(pool, fake.url))
            await asyncio.sleep(0.05)
            second = await post(pool, fake.url)
            assert ((await first).body, second.body) == (b"a", b"b")
            assert fake.connections == 1
    run(main())


def test_a_pool_wait_past_the_timeout_is_a_pool_timeout() -> None:
    async def main() -> None:
        async with upstream(slow(0.5)) as fake, lean(ONE) as pool:
            first = asyncio.create_task(post(pool, fake.url))
            await asyncio.sleep(0.05)
            with pytest.raises(httpx.PoolTimeout):
                await post(pool, fake.url, timeout_s=0.1)
            assert (await first).body == b"slow"
    run(main())


def test_an_idle_connection_the_server_closed_is_replaced() -> None:
    async def main() -> None:
        async with upstream(reply(b"1") , reply(b"2")) as fake, lean() as pool:
            assert (await post(pool, fake.url)).body == b"1"
            for writer in fake._writers:
                writer.close()
            await asyncio.sleep(0.05)
            assert (await post(pool, fake.url)).body == b"2"
            assert fake.connections == 2
    run(main())


def test_an_old_idle_connection_is_not_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        async with upstream(reply(b"1"), reply(b"2")) as fake, lean() as pool:
            await post(pool, fake.url)
            monkeypatch.setattr(transport, "KEEPALIVE_EXPIRY_S", 0.0)
            await asyncio.sleep(0.01)
            await post(pool, fake.url)
            assert fake.connections == 2
    run(main())


def test_a_cancelled_call_does_not_leave_its_connection_in_the_pool() -> None:
    async def main() -> None:
        async with upstream(slow(0.3, b"late"), reply(b"fresh")) as fake, lean() as pool:
            task = asyncio.create_task(post(pool, fake.url))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.05)
            assert fake.readers[0].at_eof()  # closed at once, not left open for the late reply
            # The late reply must not be read as the answer to the next call.
            assert (await post(pool, fake.url)).body == b"fresh"
            assert fake.connections == 2
    run(main())


def test_multipart_through_httpx_uses_lean_connections() -> None:
    async def main() -> None:
        client = transport.Client(LIMITS, httpx.Timeout(5.0))
        async with upstream(reply(b'{"ok":1}'), reply(b'{"ok":2}')) as fake:
            for expected in (b'{"ok":1}', b'{"ok":2}'):
                response = await client.post(fake.url + "/v1/images/edits", data={"n": "1"},
                                             files=[("image", ("a.png", b"PNGDATA", "image/png"))])
                assert response.content == expected
            assert fake.connections == 1
            seen = fake.requests[0]
            assert b"multipart/form-data" in seen.head and b"PNGDATA" in seen.body
            assert f"content-length: {len(seen.body)}".encode() in seen.head.lower()
        await client.aclose()
    run(main())


def test_https_without_a_tls_context_goes_to_httpx_own_transport() -> None:
    async def main() -> None:
        seen: list[str] = []

        def answer(request: httpx.Request) -> httpx.Response:
            seen.append(str(request.url))
            return httpx.Response(201, content=b"tls")

        client = transport.Client(LIMITS, httpx.Timeout(5.0))
        await client.lean.fallback.aclose()
        client.lean.fallback = httpx.MockTransport(answer)  # type: ignore[assignment]
        assert await client.lean.exchange("GET", "https://h.example/x", {}, None, 1.0) is None
        response = await client.get("https://h.example/x")
        assert (response.status_code, response.content, seen) == (201, b"tls",
                                                                   ["https://h.example/x"])
        await client.aclose()
    run(main())


def provider(name: str) -> Provider:
    return Provider(name=name, protocol="openai_images", base_url="http://127.0.0.1:9/v1",
                    timeout_s=30, max_in_flight=4)


def test_build_clients_gives_lean_clients_unless_told_otherwise(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                     "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        fake = httpx.MockTransport(lambda request: httpx.Response(200))
        clients = upstream_clients.build_clients((provider("a"), provider("b")), ADAPTERS,
                                                 1.0, {"b": fake})
        assert isinstance(clients["a"], transport.Client)
        assert not isinstance(clients["b"], transport.Client)
        monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
        proxied = upstream_clients.build_clients((provider("c"),), ADAPTERS, 1.0)
        assert not isinstance(proxied["c"], transport.Client)
        for client in (*clients.values(), *proxied.values()):
            await client.aclose()
    run(main())
