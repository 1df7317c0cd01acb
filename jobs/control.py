"""Steering a batch from Postgres: resume it now."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.status import BatchNotFound

__all__ = ["resume_batch"]

_RESUME = text(
    """
    WITH resumed AS (
        UPDATE batch SET status = 'in_progress', pause_reason = NULL, pause_message = NULL, resume_at = NULL
        WHERE id = :batch_id AND status = 'paused'
        RETURNING id
    ), cleared AS (
        UPDATE request r SET enqueued_at = NULL, next_attempt_at = LEAST(r.next_attempt_at, now())
        FROM resumed WHERE r.batch_id = resumed.id AND r.status = 'pending'
    )
    SELECT (SELECT status FROM batch WHERE id = :batch_id) AS status, (SELECT count(*) FROM resumed) AS resumed
    """
)


async def resume_batch(engine: AsyncEngine, batch_id: str) -> str:
    """Unpause a paused batch so the feeder queues its work again; returns what happened."""
    async with engine.begin() as conn:
        row = (await conn.execute(_RESUME, {"batch_id": batch_id})).one()
    if row.status is None:
        raise BatchNotFound(batch_id)
    return "resumed" if row.resumed else f"not paused (status {row.status}); nothing to do"
