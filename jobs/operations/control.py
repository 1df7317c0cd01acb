"""Steering a batch from Postgres: resume or re-queue it, cancel it, retry its failed requests."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from jobs.core.db import retry_conflicts
from jobs.core.errors import Conflict
from jobs.core.sql import sql
from jobs.core.states import BatchPriority, BatchStatus
from jobs.observation.standing import BatchNotFound
from jobs.scheduling import lifecycle

__all__ = [
    "CANCEL_REFUSED",
    "RETRY_FROM",
    "ResumeRefused",
    "cancel_batch",
    "change_priority",
    "delete_batch",
    "hold_for_its_run",
    "release_batch_queue_marks",
    "resolve_batch",
    "resume_batch",
    "retry_failed",
]

# A batch that ended on its own cannot be cancelled (its results stand); the API answers 409, a page hides it.
CANCEL_REFUSED = frozenset({BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.EXPIRED})
# Only a running or completed batch retries its failures: a paused, cancelled or expired one would not run them.
RETRY_FROM = frozenset({BatchStatus.COMPLETED, BatchStatus.IN_PROGRESS})

# A running batch is swept by hand: every unfinished request of it is fed again (after a Redis loss, say).
_REQUEUE = sql(
    """
    WITH target AS (
        SELECT id FROM request WHERE batch_id = :batch_id AND status = {R.PENDING} ORDER BY id FOR UPDATE
    )
    UPDATE request r SET enqueued_at = NULL, next_attempt_at = LEAST(r.next_attempt_at, now())
    FROM target WHERE r.id = target.id AND r.status = {R.PENDING}
    """
)

_STATUS = sql("SELECT status FROM batch WHERE id = :b")
# Requests of the batch lane a remote batch holds: a cancel is passed on to them by their driver.
_IN_REMOTE_BATCHES = sql(
    "SELECT count(*) FROM request WHERE batch_id = :b AND status = {R.REMOTE} AND remote_batch_id IS NOT NULL"
)

# A run's own queue is gone: its requests still marked queued are fed again by whoever works the batch next.
# A new job id (`feeds` + 1): the job a `submit` left in the fleet's queue keeps its id in Redis, and arq refuses
# a second job of the same id, so a run's own queue would never get the request.
_RELEASE_QUEUE_MARKS = sql(
    """
    WITH target AS (
        SELECT id FROM request WHERE batch_id = :batch_id AND status = {R.PENDING} AND enqueued_at IS NOT NULL
        ORDER BY id FOR UPDATE
    )
    UPDATE request r SET enqueued_at = NULL, feeds = r.feeds + 1 FROM target WHERE r.id = target.id
    """
)


class ResumeRefused(Conflict):
    """Resuming would stop again at once (a spent budget with no higher cap)."""


async def resume_batch(engine: AsyncEngine, batch_id: str, max_cost: Decimal | None = None) -> str:
    """Unpause a paused batch (or re-queue a running one's unfinished requests); returns what happened."""
    return await retry_conflicts(lambda: _resume(engine, batch_id, max_cost))


async def _resume(engine: AsyncEngine, batch_id: str, max_cost: Decimal | None) -> str:
    async with engine.begin() as conn:
        row = (
            await conn.execute(
                sql("SELECT status, max_cost, spent FROM batch WHERE id = :batch_id FOR UPDATE"),
                {"batch_id": batch_id},
            )
        ).one_or_none()
        if row is None:
            raise BatchNotFound(batch_id)
        if (
            max_cost is None
            and row.status == BatchStatus.PAUSED
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
        if row.status == BatchStatus.IN_PROGRESS:
            requeued = (await conn.execute(_REQUEUE, {"batch_id": batch_id})).rowcount
            return f"running; {requeued} unfinished requests queued again"
        resumed = await lifecycle.resume_paused(conn, batch_id, max_cost)
    return "resumed" if resumed else f"not paused (status {row.status}); nothing to do"


async def hold_for_its_run(engine: AsyncEngine, batch_id: str) -> bool:
    """Pause a stopped run's batch, so no fleet or server worker takes it up until the same `orbatch run`
    command runs again or a user resumes it; True when it was running and is now held."""
    message = (
        "its `orbatch run` was stopped: the same command carries on with it, or `orbatch resume` hands it to "
        "any worker"
    )
    async with engine.begin() as conn:
        return await lifecycle.hold_for_run(conn, batch_id, message)


_PRIORITY = sql("UPDATE batch SET priority = :priority WHERE id = :batch_id RETURNING status")


async def change_priority(engine: AsyncEngine, batch_id: str, priority: BatchPriority) -> str:
    """Set a batch's priority; the feeder orders its next jobs by it (those already queued keep their place)."""
    async with engine.begin() as conn:
        row = (
            await conn.execute(_PRIORITY, {"batch_id": batch_id, "priority": priority.value})
        ).one_or_none()
    if row is None:
        raise BatchNotFound(batch_id)
    return f"priority {priority.value}"


async def cancel_batch(engine: AsyncEngine, batch_id: str) -> str:
    """Stop a batch: queued requests are cancelled, calls in flight finish and are kept."""
    return await retry_conflicts(lambda: _cancel(engine, batch_id))


async def _cancel(engine: AsyncEngine, batch_id: str) -> str:
    async with engine.begin() as conn:
        cancelled = await lifecycle.cancel(conn, batch_id)
        status = (await conn.execute(_STATUS, {"b": batch_id})).scalar()
        remote = (
            (await conn.execute(_IN_REMOTE_BATCHES, {"b": batch_id})).scalar() if cancelled.batches else 0
        )
    if status is None:
        raise BatchNotFound(batch_id)
    if not cancelled.batches:
        return f"already {status}; nothing to cancel"
    said = f"cancelling: {cancelled.requests} queued requests cancelled; calls in flight finish and are kept"
    if remote:
        said += (
            f"; {remote} requests in remote batches: the cancel is passed on to OpenRouter (where the key may "
            "cancel), and what they still answer is kept, as it is paid"
        )
    return said


async def retry_failed(engine: AsyncEngine, batch_id: str) -> int:
    """Queue the batch's failed requests again with fresh attempts; returns how many."""
    return await retry_conflicts(lambda: _retry_failed(engine, batch_id))


async def _retry_failed(engine: AsyncEngine, batch_id: str) -> int:
    async with engine.begin() as conn:
        status = (await conn.execute(_STATUS, {"b": batch_id})).scalar()
        if status is None:
            raise BatchNotFound(batch_id)
        if status not in RETRY_FROM:
            raise ResumeRefused(
                f"{batch_id} is {status}: only a running or completed batch can retry its failures"
            )
        return await lifecycle.retry_failed(conn, batch_id)


async def release_batch_queue_marks(engine: AsyncEngine, batch_id: str) -> None:
    """Forget which of the batch's requests are queued (their queue is gone); the feeder queues them again."""
    await retry_conflicts(lambda: _release_marks(engine, batch_id))


async def _release_marks(engine: AsyncEngine, batch_id: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(_RELEASE_QUEUE_MARKS, {"batch_id": batch_id})


_BY_NAME = sql(
    "SELECT id, created_at, count(*) OVER () AS named FROM batch WHERE name = :name ORDER BY created_at DESC LIMIT 1"
)
_EXISTS = sql("SELECT 1 FROM batch WHERE id = :id")


async def resolve_batch(conn: AsyncConnection, ref: str) -> tuple[str, str | None]:
    """The batch a user means by an id or a name (the latest of that name), and a note when the name is shared."""
    if (await conn.execute(_EXISTS, {"id": ref})).first() is not None:
        return ref, None
    row = (await conn.execute(_BY_NAME, {"name": ref})).one_or_none()
    if row is None:
        raise BatchNotFound(ref)
    note = None
    if row.named > 1:
        note = (
            f"{row.named} batches are named {ref!r}; this is the latest, {row.id} "
            f"(created {row.created_at:%Y-%m-%d %H:%M} UTC): give its id for another"
        )
    return str(row.id), note


async def delete_batch(engine: AsyncEngine, batch_id: str) -> int:
    """Delete a finished (or paused, idle) batch and every row of it; how many requests it had."""
    async with engine.begin() as conn:
        status = (await conn.execute(_STATUS, {"b": batch_id})).scalar()
        if status is None:
            raise BatchNotFound(batch_id)
        total = await lifecycle.delete(conn, batch_id)
    if total is None:
        raise Conflict(
            f"{batch_id} is {status} with calls running: cancel it first (`orbatch cancel {batch_id}`), "
            "then delete it once it is cancelled"
        )
    return total
