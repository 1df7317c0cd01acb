"""Steering a batch from Postgres: resume or re-queue it, cancel it, retry its failed requests."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.status import BatchNotFound

__all__ = ["ResumeRefused", "cancel_batch", "resume_batch", "retry_failed"]

_RESUME = text(
    """
    WITH resumed AS (
        UPDATE batch SET status = 'in_progress', pause_reason = NULL, pause_message = NULL, resume_at = NULL,
               max_cost = coalesce(CAST(:max_cost AS numeric), max_cost)
        WHERE id = :batch_id AND status = 'paused'
        RETURNING id
    ), cleared AS (
        UPDATE request r SET enqueued_at = NULL, next_attempt_at = LEAST(r.next_attempt_at, now())
        FROM resumed WHERE r.batch_id = resumed.id AND r.status = 'pending'
    )
    SELECT count(*) FROM resumed
    """
)

# A running batch is swept by hand: every unfinished request of it is fed again (after a Redis loss, say).
_REQUEUE = text(
    """
    UPDATE request SET enqueued_at = NULL, next_attempt_at = LEAST(next_attempt_at, now())
    WHERE batch_id = :batch_id AND status = 'pending'
    """
)

# No new call starts for a cancelling batch; calls in flight finish and are kept, then the feeder marks
# the batch cancelled.
_CANCEL = text(
    """
    WITH batch_row AS (
        UPDATE batch SET status = 'cancelling', pause_reason = NULL, pause_message = NULL, resume_at = NULL
        WHERE id = :batch_id AND status IN ('validating', 'in_progress', 'paused')
        RETURNING id
    ), cancelled AS (
        UPDATE request r SET status = 'cancelled', finished_at = now(), enqueued_at = NULL
        FROM batch_row WHERE r.batch_id = batch_row.id AND r.status = 'pending'
        RETURNING r.id
    )
    SELECT (SELECT count(*) FROM batch_row) AS batches, (SELECT count(*) FROM cancelled) AS requests
    """
)

_RETRY_FAILED = text(
    """
    WITH retried AS (
        UPDATE request SET status = 'pending', failures = 0, chain_pos = 0, next_attempt_at = now(),
               enqueued_at = NULL, finished_at = NULL, last_error = NULL
        WHERE batch_id = :batch_id AND status = 'failed'
        RETURNING id
    ), reopened AS (
        UPDATE batch SET status = 'in_progress', finished_at = NULL
        WHERE id = :batch_id AND status IN ('completed', 'in_progress') AND EXISTS (SELECT 1 FROM retried)
        RETURNING id
    )
    SELECT count(*) FROM retried
    """
)


class ResumeRefused(ValueError):
    """Resuming would stop again at once (a spent budget with no higher cap)."""


async def resume_batch(engine: AsyncEngine, batch_id: str, max_cost: Decimal | None = None) -> str:
    """Unpause a paused batch so the feeder queues its work again; returns what happened."""
    async with engine.begin() as conn:
        row = (
            await conn.execute(
                text("SELECT status, max_cost, spent FROM batch WHERE id = :batch_id FOR UPDATE"),
                {"batch_id": batch_id},
            )
        ).one_or_none()
        if row is None:
            raise BatchNotFound(batch_id)
        if (
            max_cost is None
            and row.status == "paused"
            and row.max_cost is not None
            and row.spent >= row.max_cost
        ):
            raise ResumeRefused(
                f"{batch_id} has spent {row.spent} USD of its {row.max_cost} USD cap; "
                "pass --max-cost with a higher cap to resume it"
            )
        if max_cost is not None and max_cost <= row.spent:
            raise ResumeRefused(
                f"--max-cost {max_cost} is not above what {batch_id} has already spent ({row.spent} USD)"
            )
        if row.status == "in_progress":
            requeued = (await conn.execute(_REQUEUE, {"batch_id": batch_id})).rowcount
            return f"running; {requeued} unfinished requests queued again"
        resumed = (await conn.execute(_RESUME, {"batch_id": batch_id, "max_cost": max_cost})).scalar_one()
    return "resumed" if resumed else f"not paused (status {row.status}); nothing to do"


async def cancel_batch(engine: AsyncEngine, batch_id: str) -> str:
    """Stop a batch: queued requests are cancelled, calls in flight finish and are kept."""
    async with engine.begin() as conn:
        row = (await conn.execute(_CANCEL, {"batch_id": batch_id})).one()
        status = (
            await conn.execute(text("SELECT status FROM batch WHERE id = :b"), {"b": batch_id})
        ).scalar()
    if status is None:
        raise BatchNotFound(batch_id)
    if not row.batches:
        return f"already {status}; nothing to cancel"
    return f"cancelling: {row.requests} queued requests cancelled; calls in flight finish and are kept"


async def retry_failed(engine: AsyncEngine, batch_id: str) -> int:
    """Queue the batch's failed requests again with fresh attempts; returns how many."""
    async with engine.begin() as conn:
        status = (
            await conn.execute(text("SELECT status FROM batch WHERE id = :b"), {"b": batch_id})
        ).scalar()
        if status is None:
            raise BatchNotFound(batch_id)
        if status not in ("completed", "in_progress"):
            raise ResumeRefused(
                f"{batch_id} is {status}: only a running or completed batch can retry its failures"
            )
        return int((await conn.execute(_RETRY_FAILED, {"batch_id": batch_id})).scalar_one())
