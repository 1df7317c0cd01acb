"""The feeder: keeps the arq queue topped up from Postgres, and is the recovery path for everything else."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.core.constants import REDIS_EPOCH_KEY
from jobs.core.sql import sql
from jobs.core.states import BatchPriority
from jobs.scheduling import lifecycle
from jobs.scheduling.fairness import FairQueue, Runnable
from jobs.scheduling.queue import enqueue_requests, job_id, rescore_jobs

__all__ = ["FeedReport", "expire_batches", "feed"]

# A request marked queued that has not started after this long is fed again. Feeding is idempotent (a
# no-op while its job still waits in Redis), so this only bounds how long a lost job strands a request:
# a job that failed outside the task's control, an expired job key, a Redis failover to a stale replica.
REQUEUE_AFTER_SECONDS = 60.0

# However many batches share a tier, each keeps at least this many jobs queued: enough for a few workers' worth
# between two feeder ticks.
MIN_WINDOW = 16

# What a tick does to a status (lease expiry, a parked batch's resume, expiry, the end of a batch) is written in
# jobs/scheduling/lifecycle.py with every other transition; the queue marks (`enqueued_at`) are the feeder's own.


@dataclass(slots=True)
class FeedReport:
    """What one feeder tick did."""

    enqueued: int = 0
    expired_leases: int = 0
    resumed_batches: int = 0
    finalized_batches: list[str] = field(default_factory=list)
    expired_batches: int = 0
    redis_reset: bool = False


# Multi-row updates of requests lock them in id order, so two of them never deadlock each other.
_FORGET_QUEUED = sql(
    """
    WITH target AS (
        SELECT id FROM request WHERE status = {R.PENDING} AND enqueued_at IS NOT NULL ORDER BY id FOR UPDATE
    )
    UPDATE request r SET enqueued_at = NULL FROM target WHERE r.id = target.id
    """
)

# A job marked queued a while ago that has not started may be lost (an expired key, or a worker killed between
# taking the job and leasing the request, whose arq in-progress key blocks that job id for the task timeout),
# or may only be waiting its turn in a long queue: Redis tells which (`_lost_jobs`). A lost one's request is fed
# again under a new job id; a waiting one's mark is renewed, so it is not looked at again for a while.
_STALE = sql(
    """
    SELECT id, attempts, feeds FROM request
    WHERE status = {R.PENDING} AND enqueued_at IS NOT NULL AND enqueued_at < now() - make_interval(secs => :after)
    ORDER BY id LIMIT :most
    """
)
_REQUEUE_STALE = sql(
    """
    WITH target AS (
        SELECT id FROM request WHERE id = ANY(CAST(:ids AS bigint[])) AND status = {R.PENDING}
          AND enqueued_at IS NOT NULL
        ORDER BY id FOR UPDATE
    )
    UPDATE request r SET enqueued_at = NULL, feeds = r.feeds + 1 FROM target WHERE r.id = target.id
    """
)
_STILL_QUEUED = sql(
    """
    WITH target AS (
        SELECT id FROM request WHERE id = ANY(CAST(:ids AS bigint[])) AND status = {R.PENDING}
          AND enqueued_at IS NOT NULL
        ORDER BY id FOR UPDATE
    )
    UPDATE request r SET enqueued_at = now() FROM target WHERE r.id = target.id
    """
)
# Stale marks looked at in one tick: the rest wait for the next.
_STALE_PER_TICK = 5000

_ACTIVE_BATCHES = sql(
    """
    SELECT b.id, coalesce(a.owner, '') AS owner, b.priority, b.simulated,
           (SELECT count(*) FROM request r WHERE r.batch_id = b.id AND r.status = {R.RUNNING})
         + (SELECT count(*) FROM request r
            WHERE r.batch_id = b.id AND r.status = {R.PENDING} AND r.enqueued_at IS NOT NULL) AS in_queue
    FROM batch b LEFT JOIN api_batch a ON a.batch_id = b.id
    WHERE b.status = {B.IN_PROGRESS} AND (CAST(:batch_id AS text) IS NULL OR b.id = :batch_id)
      AND (CAST(:simulated AS boolean) IS NULL OR b.simulated = :simulated)
    ORDER BY b.created_at
    """
)

# The due requests of each batch fed this tick, up to its room, in one round trip.
_DUE = sql(
    """
    SELECT f.batch_id, r.id, r.attempts, r.feeds
    FROM unnest(CAST(:batch_ids AS text[]), CAST(:rooms AS integer[])) AS f(batch_id, room)
    CROSS JOIN LATERAL (
        SELECT id, attempts, feeds FROM request
        WHERE batch_id = f.batch_id AND status = {R.PENDING} AND enqueued_at IS NULL AND next_attempt_at <= now()
        ORDER BY id LIMIT f.room
    ) r
    """
)

# A batch's jobs waiting in the queue, in the order they were fed: scored again when the batch's weight changed.
_QUEUED = sql(
    """
    SELECT id, attempts, feeds FROM request
    WHERE batch_id = :batch_id AND status = {R.PENDING} AND enqueued_at IS NOT NULL
    ORDER BY id
    """
)

# Marks only the requests still as they were read (every lease taken since moves `attempts` or `feeds`, the job
# id), and returns them: only those are queued. A row locked now is being leased by an older job of its request;
# it is skipped rather than waited for.
_MARK_ENQUEUED = sql(
    """
    WITH target AS (
        SELECT r.id FROM request r
        JOIN unnest(CAST(:ids AS bigint[]), CAST(:attempts AS integer[]), CAST(:feeds AS integer[]))
          AS q(id, attempts, feeds)
          ON r.id = q.id AND r.attempts = q.attempts AND r.feeds = q.feeds
        -- The ids again as an index condition: joined to the unnest alone, the planner hashes every pending
        -- request of the table, a cost that grows with the backlog on every tick.
        WHERE r.id = ANY(CAST(:ids AS bigint[])) AND r.status = {R.PENDING} AND r.enqueued_at IS NULL
        ORDER BY r.id FOR UPDATE OF r SKIP LOCKED
    )
    UPDATE request r SET enqueued_at = now()
    FROM target WHERE r.id = target.id AND r.status = {R.PENDING} AND r.enqueued_at IS NULL
    RETURNING r.id
    """
)

# Marked, but its job could not be queued (a job of the same id still runs): not waiting in the queue after all.
_UNMARK = sql(
    """
    UPDATE request SET enqueued_at = NULL
    WHERE id = ANY(CAST(:ids AS bigint[])) AND status = {R.PENDING} AND enqueued_at IS NOT NULL
    """
)


async def expire_batches(engine: AsyncEngine) -> int:
    """Expire the batches past their completion window and cancel what they left unfinished; returns how many."""
    async with engine.begin() as conn:
        expired = await lifecycle.expire_batches(conn)
    async with engine.begin() as conn:
        await lifecycle.cancel_expired_requests(conn)
    return expired


async def _lost_jobs(redis: ArqRedis, requests: list[tuple[int, int, int]]) -> set[int]:
    """Of these requests marked queued, those whose job is gone from Redis or stuck in a dead worker's claim."""
    async with redis.pipeline(transaction=False) as pipe:
        for request_id, attempts, feeds in requests:
            jid = job_id(request_id, attempts, feeds)
            pipe.exists(job_key_prefix + jid)
            pipe.exists(in_progress_key_prefix + jid)
        replies = await pipe.execute()
    return {
        request_id
        for i, (request_id, _, _) in enumerate(requests)
        if not replies[2 * i] or replies[2 * i + 1]
    }


async def _check_redis_epoch(engine: AsyncEngine, redis: ArqRedis, namespace: str) -> bool:
    """True when Redis lost its data; every queue mark in Postgres is then dropped so the work is re-fed."""
    key = REDIS_EPOCH_KEY.format(queue=namespace)
    if await redis.get(key) is not None:
        return False
    async with engine.begin() as conn:
        await conn.execute(_FORGET_QUEUED)
    await redis.set(key, uuid.uuid4().hex)
    return True


async def feed(
    engine: AsyncEngine,
    redis: ArqRedis,
    namespace: str,
    window: int,
    batch_id: str | None = None,
    requeue_after: float = REQUEUE_AFTER_SECONDS,
    queue: str | None = None,
    at_most: int | None = None,
    simulated: bool | None = None,
    shared: bool = True,
) -> FeedReport:
    """One tick: recover lost work, resume parked batches, queue due requests, finalize finished batches.

    Jobs go to `queue` (the namespace's own queue by default), in the fair queue's order (jobs/scheduling/fairness.py);
    `batch_id` feeds that batch only, `simulated` the batches of that kind of upstream only; `at_most` bounds
    how many requests are queued this tick (0 while the outage breaker holds everyone, 1 for its probe);
    `shared`: the queue is the fleet's, whose window the batches share (a run's own queue is not).
    """
    report = FeedReport()
    report.redis_reset = await _check_redis_epoch(engine, redis, namespace)
    report.expired_batches = await expire_batches(engine)
    async with engine.begin() as conn:
        report.expired_leases = await lifecycle.expire_leases(conn)
        report.resumed_batches = await lifecycle.resume_due_batches(conn)
        stale = (await conn.execute(_STALE, {"after": requeue_after, "most": _STALE_PER_TICK})).all()
    if stale:
        lost = await _lost_jobs(redis, [(int(r.id), int(r.attempts), int(r.feeds)) for r in stale])
        waiting = [int(r.id) for r in stale if int(r.id) not in lost]
        async with engine.begin() as conn:
            if lost:
                await conn.execute(_REQUEUE_STALE, {"ids": sorted(lost)})
            if waiting:
                await conn.execute(_STILL_QUEUED, {"ids": waiting})
    async with engine.begin() as conn:
        batches = (await conn.execute(_ACTIVE_BATCHES, {"batch_id": batch_id, "simulated": simulated})).all()
        weighed = batches
        if batch_id is not None and batches:
            # One batch fed (a submit's first window): it is weighed against every running batch of its kind,
            # so an owner's new batches do not each start as if alone.
            kind = {"batch_id": None, "simulated": bool(batches[0].simulated)}
            weighed = (await conn.execute(_ACTIVE_BATCHES, kind)).all()
    target = queue or namespace
    fair = FairQueue(redis, target)
    await fair.start([Runnable(b.id, b.owner, BatchPriority(b.priority)) for b in weighed])
    for bid in fair.reweighed():
        async with engine.connect() as conn:
            queued_jobs = [
                job_id(int(r.id), int(r.attempts), int(r.feeds))
                for r in await conn.execute(_QUEUED, {"batch_id": bid})
            ]
        await rescore_jobs(redis, target, queued_jobs, fair.rescore(bid, len(queued_jobs)))
    rooms: dict[str, int] = {}
    budget = at_most
    for bid, _, _, _, in_queue in batches:
        # The window is the tier's: split between the batches that share it as their shares go, so fifty batches
        # keep a queue as deep as one does (a job waiting longer than ORBATCH_REQUEUE_AFTER looks lost), and a
        # batch alone in its tier still has all of it. A window is topped up once it is half spent, so a tick
        # feeds a few batches many jobs rather than every batch one or two.
        share = fair.share(bid) if shared else 1.0
        size = max(min(MIN_WINDOW, window), math.ceil(window * share))
        room = size - int(in_queue)
        if room < size / 2 and int(in_queue) > 0:
            continue
        if budget is not None:
            room = min(room, budget)
            budget -= max(0, room)
        if room > 0:
            rooms[bid] = room
    if rooms:
        # Every batch's due requests in one query, then one pipeline of jobs and one statement of marks.
        async with engine.connect() as conn:
            rows = (await conn.execute(_DUE, {"batch_ids": list(rooms), "rooms": list(rooms.values())})).all()
        due_by_batch: dict[str, list[tuple[int, int, int]]] = {}
        for r in rows:
            due_by_batch.setdefault(str(r.batch_id), []).append((int(r.id), int(r.attempts), int(r.feeds)))
        due = [d for bid in rooms for d in due_by_batch.get(bid, [])]
        scores = [s for bid in rooms for s in fair.scores(bid, len(due_by_batch.get(bid, [])))]
        if due:
            # The mark first, then Redis. Workers take a job as soon as it is pushed (the queue is shallow): were
            # the mark after it, every lease of the tick would wait for the mark's row locks. A crash in between
            # leaves requests marked queued with no job, which the stale check finds missing in Redis after
            # ORBATCH_REQUEUE_AFTER and feeds again.
            async with engine.begin() as conn:
                marked = set(
                    (
                        await conn.execute(
                            _MARK_ENQUEUED,
                            {
                                "ids": [d[0] for d in due],
                                "attempts": [d[1] for d in due],
                                "feeds": [d[2] for d in due],
                            },
                        )
                    ).scalars()
                )
            kept = [i for i, d in enumerate(due) if d[0] in marked]
            due, scores = [due[i] for i in kept], [scores[i] for i in kept]
            outcomes = await enqueue_requests(redis, target, due, scores)
            report.enqueued += sum(1 for o in outcomes if o == 1)
            running = [d[0] for d, o in zip(due, outcomes, strict=True) if o < 0]
            if running:
                async with engine.begin() as conn:
                    await conn.execute(_UNMARK, {"ids": running})
    await fair.save()
    async with engine.begin() as conn:
        report.finalized_batches = await lifecycle.finalize_batches(conn)
    return report
