"""A shared fleet schedules fairly: paced work holds no worker slot, no batch starves another, priorities hold,
and each kind of worker gets only its own jobs. Real workers, a real Redis and Postgres, the simulator.

Each test counts what the large batch finished while the small one ran: an event count, not a time, so a slow
machine changes nothing of what it shows.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import Simulator, Workers, chat_line, run_cli, write_jsonl

pytestmark = pytest.mark.slow


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar_one()


def submit(env: dict[str, str], tmp_path: Path, name: str, count: int, models: str, *args: str) -> str:
    path = write_jsonl(
        tmp_path / f"{name}.jsonl", [chat_line(f"{name}{i}", f"{name} {i}") for i in range(count)]
    )
    done = run_cli(env, "submit", str(path), "--models", models, "--name", name, "--json", *args)
    assert done.returncode == 0, done.stderr
    return str(orjson.loads(done.stdout)["id"])


async def completed(engine: AsyncEngine, batch_id: str) -> int:
    return int(
        await scalar(
            engine,
            "SELECT count(*) FROM request WHERE batch_id = :b AND status = 'completed'",
            b=batch_id,
        )
    )


async def until(engine: AsyncEngine, batch_id: str, count: int, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while await completed(engine, batch_id) < count:
        assert time.monotonic() < deadline, f"{batch_id} did not reach {count} completed requests"
        await asyncio.sleep(0.05)


async def beside(
    engine: AsyncEngine, env: dict[str, str], tmp_path: Path, large: str, small_args: tuple[str, ...]
) -> int:
    """Submit the small batch (8 paid requests) while the large one runs: how many requests of the large one
    finished between the small one's submit returning and its last answer, by the rows' own times.

    The count starts when `submit` has returned, so its jobs are in the queue: a loaded machine's slow submit (its
    rows written, then its jobs enqueued) is not counted against the schedule. A schedule that made the small
    batch wait behind the large one's hundreds of queued jobs still counts them all.
    """
    small = submit(env, tmp_path, "small", 8, "sim/echo", *small_args)
    submitted = await scalar(engine, "SELECT clock_timestamp()")
    await until(engine, small, 8)
    return int(
        await scalar(
            engine,
            "SELECT count(*) FROM request r WHERE r.batch_id = :large AND r.status = 'completed'"
            " AND r.finished_at > :submitted"
            " AND r.finished_at <= (SELECT max(finished_at) FROM request WHERE batch_id = :small)",
            large=large,
            small=small,
            submitted=submitted,
        )
    )


async def test_paced_free_requests_hold_no_worker_slot_so_a_paid_batch_goes_at_once(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    # OpenRouter's free tier on a clock ten times faster: a free request every 0.3 s or so, 40 of them take 12 s.
    await simulator.reset(free_per_minute=20, free_window_seconds=6, latency_ms=100)
    large = submit(env, tmp_path, "free", 40, "sim/echo:free")
    workers = Workers(env, tmp_path, 1, "--concurrency", "4")
    try:
        await until(engine, large, 3)
        # The free requests waiting for their slots wait in Postgres, not in the worker's four slots.
        assert await beside(engine, env, tmp_path, large, ()) <= 4
        await until(engine, large, 40)
    finally:
        workers.kill()
    stats = await simulator.stats()
    assert stats.get("429:free-models-per-min", 0) == 0
    # Free requests went back to wait for their slots (each time a new job id, so `feeds` counts it).
    assert await scalar(engine, "SELECT max(feeds) FROM request WHERE batch_id = :b", b=large) >= 1


async def test_a_small_batch_behind_a_large_one_shares_the_fleet_at_once(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.reset(latency_ms=50)
    large = submit(env, tmp_path, "large", 400, "sim/echo")
    workers = Workers(env, tmp_path, 1, "--concurrency", "4")
    try:
        await until(engine, large, 20)
        # One for one with the large batch's requests, not after the hundreds queued before it.
        assert await beside(engine, env, tmp_path, large, ()) <= 24
    finally:
        workers.kill()


@pytest.mark.parametrize(
    ("large_priority", "small_priority"), [("background", "normal"), ("normal", "urgent")]
)
async def test_a_higher_priority_goes_before_a_lower_one(
    env: dict[str, str],
    engine: AsyncEngine,
    simulator: Simulator,
    tmp_path: Path,
    large_priority: str,
    small_priority: str,
) -> None:
    await simulator.reset(latency_ms=50)
    large = submit(env, tmp_path, "large", 400, "sim/echo", "--priority", large_priority)
    workers = Workers(env, tmp_path, 1, "--concurrency", "4")
    try:
        await until(engine, large, 20)
        # Only the calls already in hand (and the jobs already claimed) of the lower priority go first.
        assert await beside(engine, env, tmp_path, large, ("--priority", small_priority)) <= 8
    finally:
        workers.kill()
    status = orjson.loads(run_cli(env, "status", large, "--json").stdout)
    assert status["id"] == large


async def test_workers_of_two_kinds_on_one_redis_each_get_only_their_own_jobs(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, artifacts: Path, tmp_path: Path
) -> None:
    # A second upstream that passes for OpenRouter itself: a fleet in front of it beside one in front of the
    # simulator, on one Redis and one database.
    openrouter = Simulator(artifacts / f"openrouter-{time.monotonic_ns()}.log")
    try:
        await openrouter.configure(identify=False)
        real_env = {**env, "OPENROUTER_BASE_URL": openrouter.base_url}
        real = submit(real_env, tmp_path, "real", 40, "sim/echo")
        simulated = submit(env, tmp_path, "simulated", 40, "sim/echo")
        fleets = [Workers(real_env, tmp_path, 1), Workers(env, tmp_path, 1)]
        try:
            await until(engine, real, 40, 60)
            await until(engine, simulated, 40, 60)
        finally:
            for fleet in fleets:
                fleet.kill()
        # No job went to a worker that could not take it, so none waited to be fed again.
        assert await scalar(engine, "SELECT max(feeds) FROM request") == 0
        assert len(await openrouter.calls()) == 40
        assert len(await simulator.calls()) == 40
        batches = {b["name"]: b["simulated"] for b in orjson.loads(run_cli(env, "status", "--json").stdout)}
        assert batches == {"real": False, "simulated": True}
    finally:
        openrouter.stop()
