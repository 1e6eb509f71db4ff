"""The overhead benchmark's floor: a store-and-forward HTTP relay that does nothing else.

Any proxy that must see a whole reply before it answers (to check it, fail over, bill it)
pays to receive the upstream's bytes and then send them again. This relay pays exactly that
and nothing more: per client connection, one upstream connection; each request is forwarded
as it came, each reply read whole (by Content-Length) and written back. No parsing beyond the
framing, no auth, no ledger. The benchmark measures it beside Switchyard, so Switchyard's own
cost is what it adds over this relay, on the same machine at the same moment.

It runs in its own process (`python -m proxy.bench.relay --upstream-port P [--ca-file F]
[--loop uvloop|asyncio]`, the event loop Switchyard runs on), prints its port on the first line
of stdout, and serves until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import ssl
import sys
from collections.abc import Sequence

_LENGTH = re.compile(rb"(?im)^content-length:\s*(\d+)")
_HEAD_END = b"\r\n\r\n"
LIMIT = 1 << 16  # the longest head


async def _message(reader: asyncio.StreamReader) -> bytes:
    """One HTTP/1.1 message with a Content-Length body (or none), head and body as received."""
    head = await reader.readuntil(_HEAD_END)
    found = _LENGTH.search(head)
    return head + await reader.readexactly(int(found.group(1))) if found else head


async def _client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int,
                  tls: ssl.SSLContext | None) -> None:
    upstream_reader, upstream_writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=tls, limit=LIMIT)
    try:
        while True:
            upstream_writer.write(await _message(reader))
            writer.write(await _message(upstream_reader))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass  # either side closed: so does the relay
    finally:
        upstream_writer.close()
        writer.close()


async def serve(upstream_port: int, tls: ssl.SSLContext | None) -> None:
    server = await asyncio.start_server(
        lambda r, w: _client(r, w, upstream_port, tls), "127.0.0.1", 0, limit=LIMIT,
        backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m proxy.bench.relay")
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--ca-file", help="the upstream is on https, with this certificate")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="asyncio")
    args = parser.parse_args(argv)
    tls = ssl.create_default_context(cafile=args.ca_file) if args.ca_file else None
    run = asyncio.run
    if args.loop == "uvloop":
        import uvloop

        run = uvloop.run
    try:
        run(serve(args.upstream_port, tls))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
