"""The API's short memory of batch objects: shared reads, and a change through this instance seen at once."""

from __future__ import annotations

import asyncio

from jobs.api.cache import BatchCache


async def test_pollers_within_the_ttl_share_one_read() -> None:
    cache, reads = BatchCache(ttl=60), 0

    async def read() -> bytes:
        nonlocal reads
        reads += 1
        return b"v1"

    assert [await cache.get("o", "b", read) for _ in range(5)] == [b"v1"] * 5
    assert reads == 1


async def test_a_change_made_here_is_seen_by_every_owner_at_once() -> None:
    cache = BatchCache(ttl=60)
    cache.put("alice", "b", b"old")
    cache.put("admin", "b", b"old")
    cache.put("alice", "other", b"kept")
    cache.forget("b")

    async def read() -> bytes:
        return b"new"

    assert await cache.get("alice", "b", read) == b"new"
    assert await cache.get("admin", "b", read) == b"new"
    assert await cache.get("alice", "other", read) == b"kept"


async def test_a_read_begun_before_a_change_is_not_remembered() -> None:
    cache = BatchCache(ttl=60)
    begun, finish = asyncio.Event(), asyncio.Event()

    async def slow_read() -> bytes:
        begun.set()
        await finish.wait()
        return b"before the change"

    reading = asyncio.create_task(cache.get("o", "b", slow_read))
    await begun.wait()
    cache.forget("b")
    finish.set()
    assert await reading == b"before the change"  # its own caller still gets what it read

    async def read() -> bytes:
        return b"after the change"

    assert await cache.get("o", "b", read) == b"after the change"
