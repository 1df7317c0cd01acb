"""The finalizer: once an API batch has ended, its output and error files are made and its callback queued.

OpenAI's batch is `finalizing` while its results are prepared; here that is the moment the finalizer measures
the output and error files (streamed from the result rows, never stored) and records them as files, so that
a client seeing `completed` (or `expired`, `cancelled`) always finds `output_file_id` and `error_file_id`
set. The final batch object is then kept as the callback's payload, in the same transaction.
"""

from __future__ import annotations

import contextlib
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from jobs.api.objects import get_batch
from jobs.api.storage import new_file_id
from jobs.core.sql import sql
from jobs.core.states import BatchStatus
from jobs.operations.results import Unfinished, stream_file

__all__ = ["finalize_batches", "unfinished_for"]

# Batches that ended with nothing left running: an expired batch's calls in flight end first.
_CLAIM = sql(
    """
    SELECT a.batch_id, a.owner, a.callback_url, a.output_expires_seconds, b.status
    FROM api_batch a JOIN batch b ON b.id = a.batch_id
    WHERE a.finalized_at IS NULL AND b.status IN ({B.COMPLETED}, {B.FAILED}, {B.CANCELLED}, {B.EXPIRED})
      AND NOT EXISTS (
          SELECT 1 FROM request r WHERE r.batch_id = b.id AND r.status IN ({R.PENDING}, {R.RUNNING})
      )
    ORDER BY a.batch_id LIMIT 1 FOR UPDATE OF a SKIP LOCKED
    """
)

_ADD_FILE = text(
    """
    INSERT INTO api_file (id, owner, filename, purpose, bytes, expires_at, batch_id, kind)
    VALUES (:id, :owner, :filename, 'batch_output', :bytes,
            now() + make_interval(secs => CAST(:expires AS double precision)), :batch_id, :kind)
    """
)


def unfinished_for(status: str) -> Unfinished | None:
    """How a batch in this state reports the requests it never finished, in its error file."""
    if status == BatchStatus.EXPIRED:
        return Unfinished("batch_expired", "the batch expired before this request was answered")
    if status == BatchStatus.CANCELLED:
        return Unfinished("batch_cancelled", "the batch was cancelled before this request was answered")
    return None


async def _size(engine: AsyncEngine, batch_id: str, kind: Literal["output", "errors"], status: str) -> int:
    size = 0
    async with contextlib.aclosing(stream_file(engine, batch_id, kind, unfinished_for(status))) as pieces:
        async for piece in pieces:
            size += len(piece)
    return size


async def _add_file(
    conn: AsyncConnection, row: Any, kind: Literal["output", "errors"], size: int
) -> str | None:
    if size == 0:
        return None
    file_id = new_file_id()
    await conn.execute(
        _ADD_FILE,
        {
            "id": file_id,
            "owner": row.owner,
            "filename": f"{row.batch_id}_{'output' if kind == 'output' else 'error'}.jsonl",
            "bytes": size,
            "expires": row.output_expires_seconds,
            "batch_id": row.batch_id,
            "kind": kind,
        },
    )
    return file_id


async def _finalize_one(engine: AsyncEngine) -> bool:
    async with engine.begin() as conn:
        row = (await conn.execute(_CLAIM)).one_or_none()
        if row is None:
            return False
        output_id = error_id = None
        if row.status != BatchStatus.FAILED:
            output_size = await _size(engine, row.batch_id, "output", row.status)
            error_size = await _size(engine, row.batch_id, "errors", row.status)
            output_id = await _add_file(conn, row, "output", output_size)
            error_id = await _add_file(conn, row, "errors", error_size)
        await conn.execute(
            text(
                "UPDATE api_batch SET finalized_at = now(), output_file_id = :output, error_file_id = :errors"
                " WHERE batch_id = :id"
            ),
            {"id": row.batch_id, "output": output_id, "errors": error_id},
        )
        if row.callback_url is not None:
            final = await get_batch(conn, row.owner, row.batch_id)
            await conn.execute(
                text(
                    "INSERT INTO api_callback (batch_id, url, payload) VALUES (:id, :url, :payload)"
                    " ON CONFLICT (batch_id) DO NOTHING"
                ),
                {"id": row.batch_id, "url": row.callback_url, "payload": final.model_dump_json()},
            )
    return True


async def finalize_batches(engine: AsyncEngine, limit: int = 20) -> int:
    """Finalize up to `limit` batches that ended; returns how many."""
    done = 0
    while done < limit and await _finalize_one(engine):
        done += 1
    return done
