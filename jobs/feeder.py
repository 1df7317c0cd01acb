"""The feeder: keeps the arq queue topped up from Postgres, and is the recovery path for everything else."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from arq.connections import ArqRedis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.constants import EXPIRY_SWEEP_SECONDS, REDIS_EPOCH_KEY, REQUEUE_AFTER_SECONDS
from jobs.queue import enqueue_requests

__all__ = ["FeedReport", "expire_batches", "feed"]


@dataclass(slots=True)
class FeedReport:
    """What one feeder tick did."""

    enqueued: int = 0
    expired_leases: int = 0
    resumed_batches: int = 0
    finalized_batches: int = 0
    expired_batches: int = 0
    redis_reset: bool = False


_EXPIRE_LEASES = text(
    """
    WITH target AS (
        SELECT id FROM request WHERE status = 'running' AND lease_expires_at < now() ORDER BY id FOR UPDATE
    ), expired AS (
        UPDATE request r SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL,
               enqueued_at = NULL, next_attempt_at = now()
        FROM target WHERE r.id = target.id AND r.status = 'running' AND r.lease_expires_at < now()
        RETURNING r.id, r.attempts
    )
    UPDATE attempt a SET outcome = 'abandoned', finished_at = now(),
           error_message = 'the worker running this call stopped before recording it'
    FROM expired e WHERE a.request_id = e.id AND a.number = e.attempts AND a.outcome = 'in_flight'
    RETURNING a.request_id
    """
)

# A parked batch whose wait is over runs again; its requests' queue marks are dropped so they are re-fed.
_RESUME_BATCHES = text(
    """
    WITH resumed AS (
        UPDATE batch SET status = 'in_progress', pause_reason = NULL, pause_message = NULL, resume_at = NULL
        WHERE status = 'paused' AND resume_at IS NOT NULL AND resume_at <= now()
        RETURNING id
    ), target AS (
        SELECT r.id FROM request r JOIN resumed ON r.batch_id = resumed.id
        WHERE r.status = 'pending' AND r.enqueued_at IS NOT NULL ORDER BY r.id FOR UPDATE OF r
    ), cleared AS (
        UPDATE request r SET enqueued_at = NULL FROM target WHERE r.id = target.id
    )
    SELECT count(*) FROM resumed
    """
)

# Multi-row updates of requests lock them in id order, so two of them never deadlock each other.
_FORGET_QUEUED = text(
    """
    WITH target AS (
        SELECT id FROM request WHERE status = 'pending' AND enqueued_at IS NOT NULL ORDER BY id FOR UPDATE
    )
    UPDATE request r SET enqueued_at = NULL FROM target WHERE r.id = target.id
    """
)

# A job marked queued a while ago that never started is lost (an expired key, or a worker killed between
# taking the job and leasing the request, whose arq in-progress key blocks that job id for the task
# timeout): the request is fed again under a new job id.
_REQUEUE_STALE = text(
    """
    WITH target AS (
        SELECT id FROM request WHERE status = 'pending' AND enqueued_at IS NOT NULL
          AND enqueued_at < now() - make_interval(secs => :after)
        ORDER BY id FOR UPDATE
    )
    UPDATE request r SET enqueued_at = NULL, feeds = r.feeds + 1 FROM target WHERE r.id = target.id
    """
)

_ACTIVE_BATCHES = text(
    """
    SELECT b.id,
           (SELECT count(*) FROM request r WHERE r.batch_id = b.id AND r.status = 'running')
         + (SELECT count(*) FROM request r
            WHERE r.batch_id = b.id AND r.status = 'pending' AND r.enqueued_at IS NOT NULL) AS in_queue
    FROM batch b WHERE b.status = 'in_progress' AND (CAST(:batch_id AS text) IS NULL OR b.id = :batch_id)
    ORDER BY b.created_at
    """
)

_DUE = text(
    """
    SELECT id, attempts, feeds FROM request
    WHERE batch_id = :batch_id AND status = 'pending' AND enqueued_at IS NULL AND next_attempt_at <= now()
    ORDER BY id LIMIT :room
    """
)

# Marks only the requests still as they were read: one taken or retried since has a new job id.
_MARK_ENQUEUED = text(
    """
    WITH target AS (
        SELECT r.id FROM request r
        JOIN unnest(CAST(:ids AS bigint[]), CAST(:attempts AS integer[])) AS q(id, attempts)
          ON r.id = q.id AND r.attempts = q.attempts
        WHERE r.status = 'pending' AND r.enqueued_at IS NULL
        ORDER BY r.id FOR UPDATE OF r
    )
    UPDATE request r SET enqueued_at = now()
    FROM target WHERE r.id = target.id AND r.status = 'pending' AND r.enqueued_at IS NULL
    """
)

_FINALIZE = text(
    """
    UPDATE batch b SET status = CASE WHEN b.status = 'cancelling' THEN 'cancelled' ELSE 'completed' END,
           finished_at = now()
    WHERE b.status IN ('in_progress', 'cancelling')
      AND NOT EXISTS (SELECT 1 FROM request r WHERE r.batch_id = b.id AND r.status IN ('pending', 'running'))
    RETURNING b.id
    """
)


# A batch past its completion window (one created through the API) expires: no new call starts, and its
# unfinished requests are cancelled (its error file reports them as `batch_expired`); finished ones are kept.
_EXPIRE_BATCHES = text(
    """
    UPDATE batch SET status = 'expired', pause_reason = NULL, pause_message = NULL, resume_at = NULL,
           finished_at = now()
    WHERE expires_at IS NOT NULL AND expires_at <= now() AND status IN ('validating', 'in_progress', 'paused')
    RETURNING id
    """
)

# Calls in flight at expiry end as they would; one that would run its request again puts it back to pending,
# so requests of lately expired batches are cancelled on every tick, not only at the moment of expiry.
_CANCEL_EXPIRED_REQUESTS = text(
    """
    WITH target AS (
        SELECT r.id FROM request r JOIN batch b ON b.id = r.batch_id
        WHERE b.status = 'expired' AND b.expired_at > now() - make_interval(secs => :sweep)
          AND r.status = 'pending'
        ORDER BY r.id FOR UPDATE OF r
    )
    UPDATE request r SET status = 'cancelled', finished_at = now(), enqueued_at = NULL, last_error = 'batch_expired'
    FROM target WHERE r.id = target.id AND r.status = 'pending'
    """
)


async def expire_batches(engine: AsyncEngine) -> int:
    """Expire the batches past their completion window and cancel what they left unfinished; returns how many."""
    async with engine.begin() as conn:
        expired = len((await conn.execute(_EXPIRE_BATCHES)).all())
    async with engine.begin() as conn:
        await conn.execute(_CANCEL_EXPIRED_REQUESTS, {"sweep": EXPIRY_SWEEP_SECONDS})
    return expired


async def _check_redis_epoch(engine: AsyncEngine, redis: ArqRedis, queue_name: str) -> bool:
    """True when Redis lost its data; every queue mark in Postgres is then dropped so the work is re-fed."""
    key = REDIS_EPOCH_KEY.format(queue=queue_name)
    if await redis.get(key) is not None:
        return False
    async with engine.begin() as conn:
        await conn.execute(_FORGET_QUEUED)
    await redis.set(key, uuid.uuid4().hex)
    return True


async def feed(
    engine: AsyncEngine,
    redis: ArqRedis,
    queue_name: str,
    window: int,
    batch_id: str | None = None,
    requeue_after: float = REQUEUE_AFTER_SECONDS,
) -> FeedReport:
    """One tick: recover lost work, resume parked batches, queue due requests, finalize finished batches."""
    report = FeedReport()
    report.redis_reset = await _check_redis_epoch(engine, redis, queue_name)
    report.expired_batches = await expire_batches(engine)
    async with engine.begin() as conn:
        report.expired_leases = len((await conn.execute(_EXPIRE_LEASES)).all())
        report.resumed_batches = int((await conn.execute(_RESUME_BATCHES)).scalar_one())
        await conn.execute(_REQUEUE_STALE, {"after": requeue_after})
        batches = (await conn.execute(_ACTIVE_BATCHES, {"batch_id": batch_id})).all()
    for bid, in_queue in batches:
        room = window - int(in_queue)
        if room <= 0:
            continue
        async with engine.connect() as conn:
            due = [
                (int(r.id), int(r.attempts), int(r.feeds))
                for r in await conn.execute(_DUE, {"batch_id": bid, "room": room})
            ]
        if not due:
            continue
        # Redis first, then the mark: a crash in between leaves a job queued twice (a no-op), never a
        # request marked queued that is not.
        outcomes = await enqueue_requests(redis, queue_name, due)
        report.enqueued += sum(1 for o in outcomes if o == 1)
        queued = [d for d, o in zip(due, outcomes, strict=True) if o >= 0]
        async with engine.begin() as conn:
            await conn.execute(
                _MARK_ENQUEUED, {"ids": [d[0] for d in queued], "attempts": [d[1] for d in queued]}
            )
    async with engine.begin() as conn:
        report.finalized_batches = len((await conn.execute(_FINALIZE)).all())
    return report
