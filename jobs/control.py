"""Steering a batch from Postgres: resume it now, with a new spending cap if it stopped on its budget."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.status import BatchNotFound

__all__ = ["ResumeRefused", "resume_batch"]

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
        resumed = (await conn.execute(_RESUME, {"batch_id": batch_id, "max_cost": max_cost})).scalar_one()
    return "resumed" if resumed else f"not paused (status {row.status}); nothing to do"
