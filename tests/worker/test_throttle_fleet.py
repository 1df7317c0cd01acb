"""The throttle across a fleet: three worker processes against the simulator's scaled-down free tier."""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from arq.connections import ArqRedis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import Simulator, Workers, chat_line, run_cli, write_jsonl
from worker.classify import next_utc_midnight

# Three worker processes paced against a scaled-down limit: slow, and their pacing must not share the
# machine with another fleet test.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("fleets")]

FREE = "sim/echo:free"


def submit(env: dict[str, str], tmp_path: Path, lines: list[dict[str, Any]], models: str = FREE) -> str:
    done = run_cli(
        env, "submit", str(write_jsonl(tmp_path / "in.jsonl", lines)), "--models", models, "--json"
    )
    assert done.returncode == 0, done.stderr
    return str(orjson.loads(done.stdout)["id"])


async def rows(engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).all())


def max_in_any_window(times: list[float], window: float) -> int:
    """The most calls that fell within one window (t - window, t], as the simulator counts them."""
    times = sorted(times)
    return max(sum(1 for u in times if t - window < u <= t) for t in times)


async def test_three_workers_share_the_per_minute_limit_with_no_429(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    # 12 per 6 s. Against OpenRouter's real minute the 5 % margin leaves 3 s of slack per window for the
    # workers' wake-up jitter; scaled down it would leave 300 ms, which a machine running the suite in
    # parallel can take from one process at a time. A 15 % margin leaves 900 ms: three processes without
    # a shared throttle would still send three times the limit.
    await simulator.configure(free_per_minute=12, free_window_seconds=6)
    env = {
        **env,
        "ORBATCH_FREE_REQUESTS_PER_MINUTE": "12",
        "ORBATCH_FREE_WINDOW_SECONDS": "6",
        "ORBATCH_FREE_REQUESTS_PER_DAY": "100000",
        "ORBATCH_FREE_RATE_MARGIN": "0.15",
    }
    submit(env, tmp_path, [chat_line(f"c{i}", f"q{i}") for i in range(26)])
    workers = Workers(env, tmp_path, 3, "--burst", "--concurrency", "4")
    assert await workers.wait(120) == [0, 0, 0], workers.output()[-3000:]

    stats = await simulator.stats()
    assert stats.get("429:free-models-per-min", 0) == 0
    calls = await simulator.calls()
    assert len(calls) == 26
    assert max_in_any_window([c["t"] for c in calls], 6.0) <= 12
    assert len({w for (w,) in await rows(engine, "SELECT DISTINCT worker FROM attempt")}) >= 2
    # Waiting for the throttle spends no attempt: one call, one attempt row, no failure per request.
    assert await rows(engine, "SELECT DISTINCT status, attempts, failures FROM request") == [
        ("completed", 1, 0)
    ]


async def test_a_spent_daily_quota_parks_the_batch_and_it_resumes_by_itself(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    # The simulator's "day" lasts 6 s and allows 6 free requests; the workers are not told the quota.
    await simulator.configure(free_per_day=6, day_seconds=6)
    env = {
        **env,
        "ORBATCH_FREE_REQUESTS_PER_DAY": "100000",
        "ORBATCH_FREE_REQUESTS_PER_MINUTE": "100000",
        "ORBATCH_MAX_IN_FLIGHT": "2",
    }
    batch_id = submit(env, tmp_path, [chat_line(f"c{i}", f"q{i}") for i in range(14)])
    workers = Workers(env, tmp_path, 3, "--concurrency", "4")
    seen: set[tuple[str, str | None]] = set()
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            ((status, reason),) = await rows(
                engine, "SELECT status, pause_reason FROM batch WHERE id = :b", b=batch_id
            )
            seen.add((status, reason))
            if status == "completed":
                break
            await asyncio.sleep(0.1)
    finally:
        for p in workers.processes:
            p.send_signal(signal.SIGTERM)
        await workers.wait(30)
    assert ("paused", "quota") in seen
    assert ("completed", None) in seen, workers.output()[-3000:]
    assert await rows(engine, "SELECT DISTINCT status, failures FROM request") == [("completed", 0)]
    stats = await simulator.stats()
    assert stats.get("status:200") == 14
    # One 429 per spent day, plus at most the calls already in flight when it came back.
    assert 1 <= stats.get("429:free-models-per-day", 0) <= 6


async def test_a_429_with_a_reset_holds_every_worker_until_then(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(
        latency_ms=50,
        rules=[
            {
                "match": "trip",
                "kind": "status",
                "status": 429,
                "message": "Rate limit exceeded: free-models-per-min. ",
                "reset_in_seconds": 3,
                "times": 1,
            }
        ],
    )
    env = {**env, "ORBATCH_FREE_REQUESTS_PER_MINUTE": "100000", "ORBATCH_MAX_IN_FLIGHT": "3"}
    submit(env, tmp_path, [chat_line("first", "trip"), *(chat_line(f"c{i}", f"q{i}") for i in range(20))])
    workers = Workers(env, tmp_path, 3, "--burst", "--concurrency", "4")
    assert await workers.wait(60) == [0, 0, 0], workers.output()[-3000:]

    calls = await simulator.calls()
    (limited,) = [c for c in calls if c["status"] == 429]
    reset = limited["done"] + 3
    after = [c["t"] for c in calls if c["t"] > limited["done"] + 0.2]
    assert after, "requests were left to send after the 429"
    assert min(after) >= reset - 0.15, min(after) - limited["done"]
    assert len(calls) == 22
    assert await rows(engine, "SELECT attempts, failures FROM request WHERE custom_id = 'first'") == [(2, 0)]


async def test_the_in_flight_cap_holds_across_processes(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(latency_ms=150)
    env = {**env, "ORBATCH_MAX_IN_FLIGHT": "3"}
    submit(env, tmp_path, [chat_line(f"c{i}", f"q{i}") for i in range(30)], models="sim/echo")
    workers = Workers(env, tmp_path, 3, "--burst", "--concurrency", "8")
    assert await workers.wait(60) == [0, 0, 0], workers.output()[-3000:]
    stats = await simulator.stats()
    outcomes = await rows(
        engine, "SELECT outcome, error_code, error_message, count(*) FROM attempt GROUP BY 1, 2, 3"
    )
    assert stats["calls"] == 30, (stats, [tuple(o) for o in outcomes])
    assert 2 <= stats["max_in_flight"] <= 3


async def test_a_providers_429_backs_off_that_request_and_freezes_nobody(
    env: dict[str, str],
    engine: AsyncEngine,
    simulator: Simulator,
    redis: ArqRedis,
    queue_name: str,
    tmp_path: Path,
) -> None:
    await simulator.configure(
        rules=[
            {
                "match": "busy",
                "kind": "status",
                "status": 429,
                "message": "Provider returned error",
                "metadata": {"provider_name": "SlowProvider", "raw": "slow down"},
                "times": 1,
            }
        ]
    )
    submit(
        env,
        tmp_path,
        [chat_line("busy", "busy"), *(chat_line(f"c{i}", f"q{i}") for i in range(10))],
        models="sim/echo,sim/backup",
    )
    workers = Workers(env, tmp_path, 1, "--burst")
    assert await workers.wait(60) == [0], workers.output()[-3000:]
    history = await rows(
        engine,
        "SELECT a.outcome FROM attempt a JOIN request r ON r.id = a.request_id WHERE r.custom_id = 'busy' ORDER BY a.number",
    )
    assert [h.outcome for h in history] == ["fallback", "success"]
    assert await redis.keys(f"{queue_name}:throttle:cooldown:*") == []


async def test_our_own_daily_count_parks_the_batch_until_midnight_utc_without_spending_attempts(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, redis: ArqRedis, tmp_path: Path
) -> None:
    env = {**env, "ORBATCH_FREE_REQUESTS_PER_DAY": "3", "ORBATCH_FREE_REQUESTS_PER_MINUTE": "100000"}
    batch_id = submit(env, tmp_path, [chat_line(f"c{i}", f"q{i}") for i in range(5)])
    workers = Workers(env, tmp_path, 1, "--burst")
    assert await workers.wait(60) == [0], workers.output()[-3000:]
    status = orjson.loads(run_cli(env, "status", batch_id, "--json").stdout)
    assert status["status"] == "paused"
    assert status["pause"]["reason"] == "quota"
    # The suite's upstream is a simulator at real speed: its day is a UTC day, and the pause says whose it is.
    assert "The simulator's daily quota of 3 free requests is spent" in status["pause"]["message"]
    resume_at = datetime.fromisoformat(status["pause"]["resume_at"])
    assert abs((resume_at - next_utc_midnight(datetime.now(UTC))).total_seconds()) < 5
    assert len(await simulator.calls()) == 3
    assert (await rows(engine, "SELECT count(*) FROM attempt"))[0][0] == 3
    assert await rows(engine, "SELECT status, attempts, failures FROM request WHERE status = 'pending'") == [
        ("pending", 0, 0),
        ("pending", 0, 0),
    ]

    # Redis loses everything, the day's count with it; resumed early, the batch must not spend a 4th.
    await redis.flushdb()
    assert run_cli(env, "resume", batch_id).returncode == 0
    workers = Workers(env, tmp_path, 1, "--burst")
    assert await workers.wait(60) == [0], workers.output()[-3000:]
    assert len(await simulator.calls()) == 3
    status = orjson.loads(run_cli(env, "status", batch_id, "--json").stdout)
    assert (status["status"], status["pause"]["reason"]) == ("paused", "quota")


async def test_the_in_flight_spending_budget_waits_and_missing_credits_park(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(
        rules=[
            {
                "match": "budget",
                "kind": "status",
                "status": 402,
                "code": "openrouter_in_flight_budget",
                "message": "Request exceeds in-flight budget",
                "headers": {"Retry-After": "1"},
                "times": 1,
            }
        ]
    )
    submit(env, tmp_path, [chat_line("b", "budget")], models="sim/echo")
    workers = Workers(env, tmp_path, 1, "--burst")
    assert await workers.wait(60) == [0], workers.output()[-3000:]
    assert await rows(engine, "SELECT status, attempts, failures FROM request") == [("completed", 2, 0)]

    await simulator.configure(credits=0)
    batch_id = submit(env, tmp_path, [chat_line("c", "credits")], models="sim/echo")
    workers = Workers(env, tmp_path, 1, "--burst")
    assert await workers.wait(60) == [0], workers.output()[-3000:]
    status = orjson.loads(run_cli(env, "status", batch_id, "--json").stdout)
    assert (status["status"], status["pause"]["reason"]) == ("paused", "credits")
    assert "Add credits" in status["pause"]["message"]
