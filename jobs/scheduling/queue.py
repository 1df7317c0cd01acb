"""The arq queue as orbatch uses it: resilient Redis settings, JSON jobs carrying ids, pipelined enqueue."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from jobs.core.constants import JOB_ID_PREFIX, RUN_REQUEST_FUNCTION

__all__ = [
    "connect",
    "drop_queue",
    "enqueue_requests",
    "job_dumps",
    "job_id",
    "job_loads",
    "redis_settings",
    "rescore_jobs",
]

# One day past its scheduled time, as arq does by default: jobs carry no state, so an expired one
# is simply queued again by the feeder.
_JOB_EXPIRES_MS = 86_400_000

# Enqueue exactly as arq's enqueue_job does (skip if the job or its result exists, then store the job
# and add it to the queue), but atomically per job and for many jobs in one round trip.
# Returns 1 when queued now, 0 when already queued, -1 when that job is running (it is about to be deleted,
# so it must not count as queued).
_ENQUEUE_LUA = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then
  if redis.call('EXISTS', KEYS[4]) > 0 then return -1 end
  return 0
end
redis.call('PSETEX', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
return 1
"""


def job_dumps(value: Any) -> bytes:
    """arq job serializer: JSON, never pickle."""
    return orjson.dumps(value)


def job_loads(raw: bytes) -> Any:
    """arq job deserializer."""
    return orjson.loads(raw)


def redis_settings(redis_url: str, patient: bool = True) -> RedisSettings:
    """arq settings that ride out a Redis blip (a worker), or give up in seconds (a command a user waits on)."""
    settings = RedisSettings.from_dsn(redis_url)
    settings.conn_timeout = 5
    settings.conn_retries = 30 if patient else 1
    settings.conn_retry_delay = 1
    settings.retry_on_timeout = True
    settings.retry_on_error = [
        RedisConnectionError,
        RedisTimeoutError,
        ConnectionError,
        TimeoutError,
        OSError,
    ]
    settings.retry = Retry(ExponentialBackoff(cap=5.0, base=0.1), retries=20 if patient else 2)
    return settings


async def connect(redis_url: str, queue_name: str, patient: bool = True) -> ArqRedis:
    """An arq Redis pool with orbatch's serializer and queue."""
    return await create_pool(
        redis_settings(redis_url, patient),
        job_serializer=job_dumps,
        job_deserializer=job_loads,
        default_queue_name=queue_name,
    )


async def drop_queue(redis: ArqRedis, queue_name: str) -> int:
    """Delete a queue and the jobs in it (a run's own queue when the run ends); how many jobs there were.

    A job key left behind would make the same job id look queued to every other feeder for a day.
    """
    ids = [j.decode() for j in await redis.zrange(queue_name, 0, -1)]
    if ids:
        await redis.delete(*(job_key_prefix + j for j in ids))
    await redis.delete(queue_name)
    return len(ids)


async def rescore_jobs(
    redis: ArqRedis, queue_name: str, jobs: Sequence[str], scores: Sequence[float]
) -> None:
    """Move jobs still waiting in the queue to new places in its order; a job no longer there stays gone."""
    if jobs:
        await redis.zadd(queue_name, dict(zip(jobs, scores, strict=True)), xx=True)


def job_id(request_id: int, attempts: int, feeds: int = 0) -> str:
    """The deterministic job id of a request's next attempt; `feeds` keeps it new when attempts do not move."""
    suffix = f".{feeds}" if feeds else ""
    return f"{JOB_ID_PREFIX}{request_id}.{attempts}{suffix}"


async def enqueue_requests(
    redis: ArqRedis,
    queue_name: str,
    requests: Sequence[tuple[int, int, int]],
    scores: Sequence[float] | None = None,
) -> list[int]:
    """Queue `run_request` for each (request id, attempts, feeds): 1 queued now, 0 already queued, -1 running.

    `scores` order the jobs in the queue (workers take the lowest due score first; see jobs/scheduling/fairness.py);
    without them, the time of enqueueing: first in, first out."""
    if not requests:
        return []
    script = redis.register_script(_ENQUEUE_LUA)
    now_ms = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        for i, (request_id, attempts, feeds) in enumerate(requests):
            jid = job_id(request_id, attempts, feeds)
            payload = serialize_job(
                RUN_REQUEST_FUNCTION, (request_id, attempts), {}, None, now_ms, serializer=job_dumps
            )
            await script(
                keys=[
                    job_key_prefix + jid,
                    result_key_prefix + jid,
                    queue_name,
                    in_progress_key_prefix + jid,
                ],
                args=[_JOB_EXPIRES_MS, payload, now_ms if scores is None else scores[i], jid],
                client=pipe,
            )
        return [int(r) for r in await pipe.execute()]
