"""Claiming jobs in bulk: every queued job runs once, across workers racing for the same queue."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from arq import func
from arq.connections import ArqRedis

from jobs.scheduling.queue import job_dumps, job_loads
from worker.dispatch import ClaimingWorker


def _worker(redis: ArqRedis, queue: str, job: Any) -> ClaimingWorker:
    return ClaimingWorker(
        functions=[func(job, name="job")],
        redis_pool=redis,
        queue_name=queue,
        max_jobs=8,
        handle_signals=False,
        keep_result=0,
        job_serializer=job_dumps,
        job_deserializer=job_loads,
    )


async def test_two_claiming_workers_run_each_job_exactly_once(redis: ArqRedis) -> None:
    ran: collections.Counter[str] = collections.Counter()
    queue = "dispatch-test"

    async def job(ctx: dict[str, Any], key: str) -> None:
        ran[key] += 1
        await asyncio.sleep(0.01)

    for i in range(300):
        await redis.enqueue_job("job", f"k{i}", _job_id=f"j{i}", _queue_name=queue)
    workers = [_worker(redis, queue, job) for _ in range(2)]

    async def poll(worker: ClaimingWorker) -> None:
        # What arq's poll loop does: read the head of the queue, start what the free slots can take.
        while await redis.zcard(queue):
            await worker.start_jobs(
                await redis.zrangebyscore(queue, min=float("-inf"), max=float("inf"), start=0, num=40)
            )
            await asyncio.sleep(0.005)
        await asyncio.gather(*worker.tasks.values())

    await asyncio.wait_for(asyncio.gather(*(poll(w) for w in workers)), 60)
    assert ran == collections.Counter({f"k{i}": 1 for i in range(300)})
    assert sum(w.jobs_complete for w in workers) == 300
    assert all(w.jobs_complete > 0 for w in workers)


async def test_a_job_running_elsewhere_or_due_later_is_not_claimed(redis: ArqRedis) -> None:
    queue = "dispatch-test-2"
    await redis.enqueue_job("job", _job_id="busy", _queue_name=queue)
    await redis.enqueue_job("job", _job_id="later", _queue_name=queue, _defer_by=60)
    await redis.enqueue_job("job", _job_id="free", _queue_name=queue)
    await redis.set("arq:in-progress:busy", b"1", px=60_000)
    started: list[str] = []

    async def job(ctx: dict[str, Any]) -> None:
        started.append(ctx["job_id"])

    worker = _worker(redis, queue, job)
    await worker.start_jobs([b"busy", b"later", b"free"])
    await asyncio.gather(*worker.tasks.values())
    assert started == ["free"]
    assert await redis.exists("arq:in-progress:later") == 0


def test_the_arq_internals_the_claim_relies_on_are_as_pinned() -> None:
    """ClaimingWorker replaces arq's start_jobs; an arq upgrade that moves what it relies on must fail here."""
    import hashlib
    import inspect

    import arq
    from arq.constants import in_progress_key_prefix
    from arq.worker import Worker

    assert arq.VERSION == "0.28.0", "arq moved: re-read worker/dispatch.py against its start_jobs and run_job"
    assert in_progress_key_prefix == "arq:in-progress:"
    # The body this replaces, exactly as 0.28.0 has it: any change to it is a change to review.
    source = inspect.getsource(Worker.start_jobs)
    assert hashlib.sha256(source.encode()).hexdigest() == (
        "b45797cfa40bed7fe6e9b8b8100c5f5b4144fe85112155c4e355df6ed8521f5f"
    )
    assert list(inspect.signature(Worker.run_job).parameters) == ["self", "job_id", "score"]
    assert callable(Worker._release_sem_dec_counter_on_complete)

    async def task(_: dict[str, object]) -> None:
        return None

    worker = Worker(functions=[task], redis_pool=None, handle_signals=False, max_jobs=3)
    for name in ("sem", "job_counter", "tasks", "in_progress_timeout_s", "queue_name", "max_jobs", "loop"):
        assert hasattr(worker, name), name
