"""A short memory of the batch objects an instance answered, so that many pollers of one batch share one read.

The counts behind a batch object are maintained counters, so one read is cheap whatever the batch's size; but
fifty clients polling the same batch would still be fifty reads a poll interval, each a round trip to a
Postgres busy with the workers' writes. For ORBATCH_API_BATCH_CACHE_SECONDS an instance answers from the
object it last read. For as long again it still answers from it while one background read refreshes it, so
no poller waits on Postgres; past that, clients asking while it is read wait for that one read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

__all__ = ["BatchCache"]

# Objects remembered at once; past this the memory is emptied and refills with the batches still polled.
_MAX_ENTRIES = 10_000

Key = tuple[str, str]


class BatchCache:
    """Serialised batch objects by (owner, batch id), each kept for `ttl` seconds."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._kept: dict[Key, tuple[float, bytes]] = {}
        self._reading: dict[Key, asyncio.Future[bytes]] = {}
        self._refreshing: dict[Key, asyncio.Task[bytes]] = {}
        # When each batch was last changed through this instance: a read begun before that is not remembered.
        self._changed: dict[str, float] = {}

    def put(self, owner: str, batch_id: str, body: bytes, read_at: float | None = None) -> None:
        """Remember what this instance just read (at `read_at`, monotonic) or changed."""
        if self.ttl <= 0:
            return
        if read_at is not None and read_at < self._changed.get(batch_id, -1.0):
            return
        if len(self._kept) >= _MAX_ENTRIES:
            self._kept.clear()
        self._kept[(owner, batch_id)] = (time.monotonic(), body)

    def forget(self, batch_id: str) -> None:
        """Drop every owner's memory of a batch this instance just changed (by a page's form, say)."""
        if len(self._changed) >= _MAX_ENTRIES:
            self._changed.clear()
        self._changed[batch_id] = time.monotonic()
        for key in [key for key in self._kept if key[1] == batch_id]:
            del self._kept[key]

    async def get(self, owner: str, batch_id: str, read: Callable[[], Awaitable[bytes]]) -> bytes:
        """The object as read within `ttl` seconds (or `2 ttl`, refreshing it behind the answer), else as `read`
        gives it, one read for concurrent askers."""
        key = (owner, batch_id)
        kept = self._kept.get(key)
        age = None if kept is None else time.monotonic() - kept[0]
        if kept is not None and age is not None and age < self.ttl:
            return kept[1]
        if kept is not None and age is not None and age < 2 * self.ttl:
            if key not in self._refreshing and key not in self._reading:
                task = asyncio.create_task(self._read(key, owner, batch_id, read))
                self._refreshing[key] = task
                task.add_done_callback(lambda done: self._done_refreshing(key, done))
            return kept[1]
        return await self._read(key, owner, batch_id, read)

    def _done_refreshing(self, key: Key, task: asyncio.Task[bytes]) -> None:
        self._refreshing.pop(key, None)
        if not task.cancelled():
            # A failed refresh (the batch deleted, Postgres away) is met again by the next reader.
            task.exception()

    async def _read(self, key: Key, owner: str, batch_id: str, read: Callable[[], Awaitable[bytes]]) -> bytes:
        pending = self._reading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._reading[key] = future
        started = time.monotonic()
        try:
            body = await read()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            # Nobody else may be waiting; the exception is theirs to see, not the loop's to report.
            future.exception()
            raise
        finally:
            del self._reading[key]
        future.set_result(body)
        self.put(owner, batch_id, body, read_at=started)
        return body
