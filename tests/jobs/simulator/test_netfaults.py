"""The fault proxy the damage tests use: it forwards faithfully, and breaks the network exactly as asked."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from jobs.simulator.netfaults import FaultProxy, FaultProxyThread, postgres_proxy
from tests.support import TEST_API_KEY, Simulator


class Echo:
    """A TCP server that answers every read with the same bytes, and keeps what it received."""

    def __init__(self) -> None:
        self.received = bytearray()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                self.received.extend(data)
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


@pytest.fixture
async def echo() -> AsyncIterator[tuple[Echo, int]]:
    server = Echo()
    listening = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    yield server, listening.sockets[0].getsockname()[1]
    listening.close()
    await listening.wait_closed()


@pytest.fixture
async def proxy(echo: tuple[Echo, int]) -> AsyncIterator[FaultProxy]:
    proxy = FaultProxy("127.0.0.1", echo[1])
    await proxy.start()
    yield proxy
    await proxy.stop()


async def roundtrip(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await reader.readexactly(len(data))
    finally:
        writer.close()
        await writer.wait_closed()


async def test_bytes_go_through_both_ways_unchanged(proxy: FaultProxy, echo: tuple[Echo, int]) -> None:
    payload = bytes(range(256)) * 1000
    assert await roundtrip(proxy.port, payload) == payload
    assert bytes(echo[0].received) == payload


async def test_down_refuses_connections_on_its_port_until_up(proxy: FaultProxy) -> None:
    port = proxy.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await proxy.down()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    # A connection made before carries on.
    writer.write(b"still here")
    assert await reader.readexactly(10) == b"still here"
    writer.close()
    await writer.wait_closed()
    await proxy.up()
    assert proxy.port == port
    assert await roundtrip(port, b"back") == b"back"


async def test_reset_all_resets_every_open_connection(proxy: FaultProxy) -> None:
    connections = [await asyncio.open_connection("127.0.0.1", proxy.port) for _ in range(3)]
    for reader, writer in connections:
        writer.write(b"hi")
        assert await reader.readexactly(2) == b"hi"
    await proxy.reset_all()
    for reader, writer in connections:
        with pytest.raises(ConnectionResetError):
            await reader.read(1)
        writer.close()
    assert await roundtrip(proxy.port, b"new ones are fine") == b"new ones are fine"


async def test_a_marked_request_reaches_the_server_but_its_reply_never_reaches_the_client(
    proxy: FaultProxy, echo: tuple[Echo, int]
) -> None:
    proxy.drop_reply_after(b"COMMIT-7")
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"before ")
    assert await reader.readexactly(7) == b"before "
    # The marker split across two writes is still seen.
    writer.write(b"COMM")
    assert await reader.readexactly(4) == b"COMM"
    writer.write(b"IT-7 now")
    with pytest.raises(ConnectionResetError):
        await reader.read(100)
    writer.close()
    assert echo[0].received.endswith(b"COMMIT-7 now")
    assert proxy.dropped == 1
    # Armed once: the next marked request goes through.
    assert await roundtrip(proxy.port, b"COMMIT-7") == b"COMMIT-7"


async def test_against_postgres_the_row_is_committed_while_the_client_sees_the_connection_drop(
    database_url: str,
) -> None:
    direct = await asyncpg.connect(database_url)
    # Over TCP or the Unix socket of an embedded Postgres, whichever the suite runs on.
    proxy, through = await postgres_proxy(database_url)
    table = f"netfaults_{uuid.uuid4().hex[:8]}"
    await direct.execute(f"CREATE TABLE {table} (v text)")
    try:
        client = await asyncpg.connect(through)
        await client.execute(f"INSERT INTO {table} VALUES ($1)", "before")  # noqa: S608 - SQL built from constants; every value is a bind parameter
        marker = f"commit-{uuid.uuid4().hex}"
        proxy.drop_reply_after(marker.encode())
        with pytest.raises((ConnectionError, asyncpg.exceptions.ConnectionDoesNotExistError)):
            # Bound as a parameter: the marker travels in the Bind message of the prepared INSERT.
            await client.execute(f"INSERT INTO {table} VALUES ($1)", marker)  # noqa: S608 - SQL built from constants; every value is a bind parameter
        assert client.is_closed()
        assert [r["v"] for r in await direct.fetch(f"SELECT v FROM {table} ORDER BY v")] == ["before", marker]  # noqa: S608 - SQL built from constants; every value is a bind parameter
        assert proxy.dropped == 1
    finally:
        await direct.execute(f"DROP TABLE {table}")
        await direct.close()
        await proxy.stop()


def test_from_a_thread_in_front_of_the_simulator(simulator: Simulator) -> None:
    target = urlsplit(simulator.base_url)
    proxy = FaultProxyThread(target.hostname or "127.0.0.1", target.port or 80)
    port = proxy.start()
    base = f"http://127.0.0.1:{port}/api/v1"
    headers = {"Authorization": f"Bearer {TEST_API_KEY}"}
    body = {"model": "sim/echo", "messages": [{"role": "user", "content": "bill-me once"}]}
    try:
        # A new connection for every request, so that each meets the proxy as it is then.
        no_reuse = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(headers=headers, timeout=10, limits=no_reuse) as client:
            assert client.get(f"{base}/models").status_code == 200
            proxy.down()
            with pytest.raises(httpx.ConnectError):
                client.get(f"{base}/models")
            proxy.up()
            proxy.drop_reply_after(b"bill-me")
            with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
                client.post(f"{base}/chat/completions", json=body)
        # The simulator answered (and billed) the call the client never heard back from.
        calls = asyncio.run(simulator.calls())
        assert [(c["status"], c["body"]["messages"][0]["content"]) for c in calls] == [(200, "bill-me once")]
        assert proxy.dropped == 1
    finally:
        proxy.stop()
