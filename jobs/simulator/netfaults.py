"""A TCP fault proxy, a hostile network for damage tests and benches: it breaks loopback TCP services on cue.

`FaultProxy(host, port)` forwards every connection made to its own port to the target, byte for byte, until a
switch is thrown: `down()` (its port refuses connections until `up()`), `reset_all()` (RST every open
connection) or `drop_reply_after(marker)` (the request that carries `marker` reaches the server, and its reply is
swallowed and the client cut off: the server acted, the client never heard; against Postgres, a commit the
client cannot know about). Use it from async tests (`await proxy.start()`), or `FaultProxyThread` from code that
blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit, urlunsplit

__all__ = ["FaultProxy", "FaultProxyThread", "postgres_proxy"]

T = TypeVar("T")

# How long the server's reply to a marked request may pause before the proxy takes it as complete.
REPLY_QUIET_SECONDS = 0.05


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a RST rather than a FIN, as a crashed peer or a middlebox does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(eq=False)
class _Link:
    """One client connection and its connection to the target."""

    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    # The client sent the armed marker: the server's next reply is dropped with the client.
    doomed: bool = False
    tail: bytes = field(default=b"")


class FaultProxy:
    """A TCP proxy on loopback in front of `target_host:target_port`, with switches that break it."""

    def __init__(
        self, target_host: str, target_port: int, host: str = "127.0.0.1", target_socket: str | None = None
    ) -> None:
        self.target = (target_host, target_port)
        # A Unix socket to forward to instead (an embedded Postgres listens on one only).
        self.target_socket = target_socket
        self.host = host
        self.port = 0
        self.dropped = 0  # replies swallowed by drop_reply_after
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._marker = b""
        self._times = 0

    # --- switches --------------------------------------------------------------------------------------
    async def start(self) -> int:
        """Listen (on a free port the first time, the same one after) and return the port."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._accept, sock=sock)
        return self.port

    async def down(self) -> None:
        """Close the listening socket: new connections are refused; open ones carry on."""
        if self._server is not None:
            self._server.close()
            self._server = None

    async def up(self) -> None:
        """Listen again, on the same port."""
        if self._server is None:
            await self.start()

    async def reset_all(self) -> None:
        """Send a RST to every open client connection and drop its connection to the target."""
        for link in list(self._links):
            _abort(link.client)
            _abort(link.server)

    def drop_reply_after(self, marker: bytes, times: int = 1) -> None:
        """Arm: the next `times` (-1: every) marked requests have their reply dropped and their client reset."""
        if not marker:
            raise ValueError("the marker must not be empty")
        self._marker, self._times = marker, times

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        await self.down()
        await self.reset_all()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)

    # --- forwarding ------------------------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._handlers.discard(task)

    async def _serve(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        try:
            if self.target_socket is not None:
                server_reader, server = await asyncio.open_unix_connection(self.target_socket)
            else:
                server_reader, server = await asyncio.open_connection(*self.target)
        except OSError:
            _abort(client)  # the target is down: so is the proxied service
            return
        link = _Link(client, server)
        self._links.add(link)
        try:
            await asyncio.gather(self._upstream(link, client_reader), self._downstream(link, server_reader))
        finally:
            self._links.discard(link)
            for writer in (client, server):
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    def _marked(self, link: _Link, data: bytes) -> bool:
        if self._times == 0 or link.doomed:
            return False
        # The marker may straddle two reads: keep the end of the last one.
        window = link.tail + data
        link.tail = window[-(len(self._marker) - 1) :] if len(self._marker) > 1 else b""
        if self._marker not in window:
            return False
        self._times -= 1
        return True

    async def _upstream(self, link: _Link, reader: asyncio.StreamReader) -> None:
        try:
            while data := await reader.read(65536):
                if self._marked(link, data):
                    link.doomed = True
                link.server.write(data)
                await link.server.drain()
            if link.server.can_write_eof():
                link.server.write_eof()
        except OSError:
            _abort(link.server)
            _abort(link.client)

    async def _downstream(self, link: _Link, reader: asyncio.StreamReader) -> None:
        try:
            while data := await reader.read(65536):
                if link.doomed:
                    # The server is answering the marked request: let it finish, then cut the client off.
                    with contextlib.suppress(TimeoutError):
                        while await asyncio.wait_for(reader.read(65536), REPLY_QUIET_SECONDS):
                            pass
                    self.dropped += 1
                    _abort(link.client)
                    _abort(link.server)
                    return
                link.client.write(data)
                await link.client.drain()
            if link.client.can_write_eof():
                link.client.write_eof()
        except OSError:
            _abort(link.client)
            _abort(link.server)


class FaultProxyThread:
    """A FaultProxy running on its own event loop in a daemon thread, for tests whose client blocks."""

    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1") -> None:
        self.proxy = FaultProxy(target_host, target_port, host)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    @property
    def dropped(self) -> int:
        return self.proxy.dropped

    def start(self) -> int:
        self._thread.start()
        return self._call(self.proxy.start())

    def down(self) -> None:
        self._call(self.proxy.down())

    def up(self) -> None:
        self._call(self.proxy.up())

    def reset_all(self) -> None:
        self._call(self.proxy.reset_all())

    def drop_reply_after(self, marker: bytes, times: int = 1) -> None:
        async def arm() -> None:
            self.proxy.drop_reply_after(marker, times)

        self._call(arm())

    def stop(self) -> None:
        self._call(self.proxy.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


async def postgres_proxy(database_url: str) -> tuple[FaultProxy, str]:
    """A started FaultProxy in front of the Postgres of `database_url` (TCP or Unix socket), and the URL through it."""
    parts = urlsplit(database_url)
    socket_dir = dict(parse_qsl(parts.query)).get("host")
    port = parts.port or 5432
    if socket_dir:
        proxy = FaultProxy("127.0.0.1", port, target_socket=f"{socket_dir}/.s.PGSQL.{port}")
    else:
        proxy = FaultProxy(parts.hostname or "127.0.0.1", port)
    await proxy.start()
    user = parts.username or "postgres"
    return proxy, urlunsplit((parts.scheme, f"{user}@127.0.0.1:{proxy.port}", parts.path, "", ""))
