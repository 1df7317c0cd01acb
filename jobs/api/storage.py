"""Uploaded files in Postgres, where every API instance reaches them: written in pieces, read back in pieces."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["FileWriter", "StoredSource", "delete_expired_files", "file_blocks", "new_file_id"]

# Uploads are stored in Postgres in pieces of this size: few enough rows for a 200 MB file, small enough
# that reading one back (to submit it, or to download it) holds little memory.
FILE_CHUNK_BYTES = 1024 * 1024

_INSERT_CHUNK = "INSERT INTO api_file_chunk (file_id, seq, data) VALUES ($1, $2, $3)"


def new_file_id() -> str:
    """A fresh file id in OpenAI's style."""
    return f"file-{secrets.token_hex(12)}"


class FileWriter:
    """An upload's bytes going to Postgres a piece at a time, inside the caller's transaction.

    A piece is inserted while the next one arrives (one insert in flight at most), so receiving and storing
    overlap and memory holds two pieces whatever the file's size. Nothing is visible until the caller
    commits, and a rollback leaves nothing.
    """

    def __init__(self, raw: Any, file_id: str) -> None:
        self._raw = raw
        self.file_id = file_id
        self.size = 0
        self._digest = hashlib.sha256()
        self._buffer = bytearray()
        self._seq = 0
        self._pending: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, conn: AsyncConnection, file_id: str) -> FileWriter:
        """A writer on the connection's open transaction."""
        raw: Any = (await conn.get_raw_connection()).driver_connection
        return cls(raw, file_id)

    @property
    def sha256(self) -> str:
        """The sha256 of everything written so far."""
        return self._digest.hexdigest()

    async def write(self, data: bytes) -> None:
        """Add bytes; a full piece goes to Postgres once the previous piece is stored."""
        self.size += len(data)
        self._digest.update(data)
        self._buffer += data
        while len(self._buffer) >= FILE_CHUNK_BYTES:
            piece = bytes(self._buffer[:FILE_CHUNK_BYTES])
            del self._buffer[:FILE_CHUNK_BYTES]
            await self._store(piece)

    async def _store(self, piece: bytes) -> None:
        await self.wait()
        self._pending = asyncio.create_task(self._raw.execute(_INSERT_CHUNK, self.file_id, self._seq, piece))
        self._seq += 1

    async def wait(self) -> None:
        """Wait for the insert in flight, if any (its error is raised here)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            await pending

    async def close(self) -> None:
        """Store what is left; after this every byte written is in the transaction."""
        if self._buffer:
            piece, self._buffer = bytes(self._buffer), bytearray()
            await self._store(piece)
        await self.wait()

    async def abandon(self) -> None:
        """Let the insert in flight end before the transaction rolls back (asyncpg runs one statement at once)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            if not pending.done():
                pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)


async def file_blocks(engine: AsyncEngine, file_id: str) -> AsyncGenerator[bytes]:
    """An uploaded file's bytes, a piece at a time, from one consistent snapshot.

    A file deleted while it is read is still read whole: a batch is never made from half a file. The next
    pieces are fetched while the caller works on this one (two ahead at most), so a submit parses while
    Postgres reads.
    """
    ahead: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(maxsize=2)

    async def fetch() -> None:
        try:
            async with engine.connect() as conn:
                raw: Any = (await conn.get_raw_connection()).driver_connection
                async with raw.transaction(readonly=True, isolation="repeatable_read"):
                    cursor = raw.cursor(
                        "SELECT data FROM api_file_chunk WHERE file_id = $1 ORDER BY seq", file_id, prefetch=1
                    )
                    async for row in cursor:
                        await ahead.put(bytes(row["data"]))
            await ahead.put(None)
        except Exception as exc:  # handed to the reader, which raises it where it reads
            await ahead.put(exc)

    task = asyncio.create_task(fetch())
    try:
        while (piece := await ahead.get()) is not None:
            if isinstance(piece, BaseException):
                raise piece
            yield piece
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@dataclass(slots=True)
class StoredSource:
    """An uploaded file as a `jobs.formats.reader.Source`: what a batch is submitted from."""

    engine: AsyncEngine
    file_id: str
    name: str
    where: str
    sha256: str

    def blocks(self) -> AsyncIterator[bytes]:
        """The stored bytes, a piece at a time."""
        return file_blocks(self.engine, self.file_id)


async def delete_expired_files(engine: AsyncEngine, limit: int = 100) -> int:
    """Delete up to `limit` files past their expiry (with their bytes); returns how many."""
    async with engine.begin() as conn:
        deleted = await conn.execute(
            text(
                "DELETE FROM api_file WHERE id IN ("
                " SELECT id FROM api_file WHERE expires_at <= now() ORDER BY expires_at LIMIT :limit"
                " FOR UPDATE SKIP LOCKED)"
            ),
            {"limit": limit},
        )
    return deleted.rowcount
