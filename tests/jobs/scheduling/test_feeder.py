"""The feeder: a bounded window of due requests per batch, deterministic JSON jobs, and recovery."""

from __future__ import annotations

from pathlib import Path

import orjson
from arq.connections import ArqRedis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.scheduling.feeder import feed
from jobs.submission.submit import SubmitOptions, submit_file
from tests.support import chat_line, write_jsonl


async def submit(engine: AsyncEngine, tmp_path: Path, n: int) -> str:
    path = write_jsonl(tmp_path / "in.jsonl", (chat_line(f"c{i}", f"t{i}") for i in range(n)))
    return (await submit_file(engine, path, SubmitOptions(models=["sim/echo"]))).batch_id


async def test_feeds_a_bounded_window_with_deterministic_json_jobs(
    engine: AsyncEngine, redis: ArqRedis, queue_name: str, tmp_path: Path
) -> None:
    await submit(engine, tmp_path, 25)
    report = await feed(engine, redis, queue_name, window=10)
    assert report.enqueued == 10
    job_ids = sorted(j.decode() for j in await redis.zrange(queue_name, 0, -1))
    assert job_ids == sorted(f"r{i}.0" for i in range(1, 11))
    payload = orjson.loads(await redis.get("arq:job:r1.0"))
    assert payload["f"] == "run_request"
    assert payload["a"] == [1, 0]


async def test_feeding_again_adds_nothing_until_half_the_window_has_room_then_tops_it_up(
    engine: AsyncEngine, redis: ArqRedis, queue_name: str, tmp_path: Path
) -> None:
    await submit(engine, tmp_path, 25)
    await feed(engine, redis, queue_name, window=10)
    assert (await feed(engine, redis, queue_name, window=10)).enqueued == 0
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE request SET status = 'completed' WHERE id <= 4"))
    # A window topped up one or two jobs at a time would cost every tick a round trip per batch.
    assert (await feed(engine, redis, queue_name, window=10)).enqueued == 0
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE request SET status = 'completed' WHERE id <= 6"))
    assert (await feed(engine, redis, queue_name, window=10)).enqueued == 6
    assert await redis.zcard(queue_name) == 16


async def test_after_redis_loses_its_data_the_queued_work_is_fed_again(
    engine: AsyncEngine, redis: ArqRedis, queue_name: str, tmp_path: Path
) -> None:
    await submit(engine, tmp_path, 5)
    await feed(engine, redis, queue_name, window=10)
    await redis.flushdb()
    report = await feed(engine, redis, queue_name, window=10)
    assert report.redis_reset
    assert report.enqueued == 5
    assert await redis.zcard(queue_name) == 5


async def test_an_expired_lease_returns_the_request_and_marks_its_call_abandoned(
    engine: AsyncEngine, redis: ArqRedis, queue_name: str, tmp_path: Path
) -> None:
    batch_id = await submit(engine, tmp_path, 1)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE request SET status = 'running', attempts = 1, lease_owner = 'dead',"
                " lease_expires_at = now() - interval '1 second'"
            )
        )
        await conn.execute(
            text(
                "INSERT INTO attempt (request_id, batch_id, number, models_sent) VALUES (1, :b, 1, '{sim/echo}')"
            ),
            {"b": batch_id},
        )
    report = await feed(engine, redis, queue_name, window=10)
    assert report.expired_leases == 1
    assert [j.decode() for j in await redis.zrange(queue_name, 0, -1)] == ["r1.1"]
    async with engine.connect() as conn:
        outcome = (await conn.execute(text("SELECT outcome FROM attempt"))).scalar_one()
        status = (await conn.execute(text("SELECT status FROM request"))).scalar_one()
    assert (outcome, status) == ("abandoned", "pending")


async def test_a_batch_whose_requests_are_all_finished_is_completed(
    engine: AsyncEngine, redis: ArqRedis, queue_name: str, tmp_path: Path
) -> None:
    batch_id = await submit(engine, tmp_path, 3)
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE request SET status = CASE WHEN id = 2 THEN 'failed' ELSE 'completed' END")
        )
    report = await feed(engine, redis, queue_name, window=10)
    assert len(report.finalized_batches) == 1
    async with engine.connect() as conn:
        status = (
            await conn.execute(text("SELECT status FROM batch WHERE id = :b"), {"b": batch_id})
        ).scalar_one()
    assert status == "completed"


async def test_a_lost_job_is_fed_again_under_a_new_job_id(
    engine: AsyncEngine, redis: ArqRedis, queue_name: str, tmp_path: Path
) -> None:
    await submit(engine, tmp_path, 1)
    await feed(engine, redis, queue_name, window=10)
    # A worker took the job and died before leasing it: arq's in-progress key blocks the id for minutes.
    await redis.zrem(queue_name, "r1.0")
    await redis.set("arq:in-progress:r1.0", b"1", px=600_000)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE request SET enqueued_at = now() - interval '2 minutes'"))
    report = await feed(engine, redis, queue_name, window=10, requeue_after=60)
    assert report.enqueued == 1
    assert [j.decode() for j in await redis.zrange(queue_name, 0, -1)] == ["r1.0.1"]
