"""Nothing lost, nothing paid twice: workers SIGKILLed, Redis flushed, Postgres stopped, all mid-batch."""

from __future__ import annotations

import asyncio
import collections
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from arq.connections import ArqRedis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.core.db import create_engine, upgrade
from tests.support import (
    ROOT,
    PrivatePostgres,
    Simulator,
    Workers,
    chat_line,
    die_with_parent,
    run_cli,
    until,
    write_jsonl,
)

# Kills, floods and outages with fleets of processes: slow, and they measure what a busy machine repeats.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("fleets")]


def submit(env: dict[str, str], tmp_path: Path, n: int, *args: str) -> str:
    path = write_jsonl(tmp_path / "in.jsonl", (chat_line(f"c{i}", f"question {i}") for i in range(n)))
    done = run_cli(env, "submit", str(path), "--models", "sim/echo", "--json", *args)
    assert done.returncode == 0, done.stderr
    return str(orjson.loads(done.stdout)["id"])


async def scalar(engine: AsyncEngine, sql: str) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql))).scalar_one()


async def wait_for(engine: AsyncEngine, sql: str, target: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while await scalar(engine, sql) < target:
        assert time.monotonic() < deadline, f"{sql} never reached {target}"
        await asyncio.sleep(0.05)


async def stop_all(workers: list[subprocess.Popen[bytes]]) -> None:
    for p in workers:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in workers:
        await asyncio.to_thread(p.wait, 30)


async def every_request_answered_once(engine: AsyncEngine, n: int) -> None:
    assert await scalar(engine, "SELECT count(*) FROM request WHERE status = 'completed'") == n
    assert await scalar(engine, "SELECT count(DISTINCT request_id) FROM result") == n
    assert await scalar(engine, "SELECT count(*) FROM result") == n
    wrong = await scalar(
        engine,
        "SELECT count(*) FROM result r JOIN request q ON q.id = r.request_id"
        " WHERE r.content <> 'echo: question ' || substr(q.custom_id, 2)",
    )
    assert wrong == 0, "every result belongs to its own request"


async def test_a_sigkilled_worker_loses_nothing_and_repeats_only_its_calls_in_flight(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(latency_ms=300)
    env = {**env, "ORBATCH_LEASE_SECONDS": "2", "ORBATCH_REQUEUE_AFTER": "5"}
    submit(env, tmp_path, 200)
    workers = Workers(env, tmp_path, 3, "--concurrency", "8")
    try:
        await wait_for(engine, "SELECT count(*) FROM result", 40, 60)
        # The victim is a worker with calls in flight right now (attempt rows name host:pid:nonce).
        victim = None
        while victim is None:
            busy = await scalar(
                engine,
                "SELECT coalesce(string_agg(DISTINCT worker, ' '), '') FROM attempt WHERE outcome = 'in_flight'",
            )
            victim = next((p for p in workers.processes if f":{p.pid}:" in busy), None)
            await asyncio.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
        await wait_for(engine, "SELECT count(*) FROM request WHERE status = 'completed'", 200, 90)
    finally:
        await stop_all(workers.processes)
    await every_request_answered_once(engine, 200)
    abandoned = await scalar(engine, "SELECT count(*) FROM attempt WHERE outcome = 'abandoned'")
    calls = len(await simulator.calls())
    assert 1 <= abandoned <= 8
    # Repeated calls are at most the killed worker's calls in flight (its concurrency).
    assert calls - 200 <= 8
    # Each repeat is an abandoned call; an abandoned row may also be one cut off before it was sent.
    assert calls - 200 <= abandoned


async def test_redis_losing_everything_mid_batch_loses_no_work_and_repeats_no_call(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, redis: ArqRedis, tmp_path: Path
) -> None:
    await simulator.configure(latency_ms=50)
    batch_id = submit(env, tmp_path, 300)
    workers = Workers(env, tmp_path, 2, "--burst", "--concurrency", "8")
    await wait_for(engine, "SELECT count(*) FROM result", 60, 60)
    # Calls slow down so the batch is still mid-way when `resume` has started, however busy the machine.
    await simulator.configure(latency_ms=2000)
    await redis.flushdb()
    resumed = run_cli(env, "resume", batch_id)
    await simulator.configure(latency_ms=50)
    assert resumed.returncode == 0
    assert "unfinished requests queued again" in resumed.stderr
    assert await workers.wait(120) == [0, 0], workers.output()[-3000:]
    await every_request_answered_once(engine, 300)
    assert len(await simulator.calls()) == 300


@pytest.fixture
async def private_postgres() -> AsyncIterator[PrivatePostgres]:
    pg = await asyncio.to_thread(PrivatePostgres)
    try:
        yield pg
    finally:
        await asyncio.to_thread(pg.destroy)


async def _nothing_in_flight(simulator: Simulator) -> bool:
    return int((await simulator.stats())["in_flight"]) == 0


async def _retrying_for(workers: Workers, wait: float) -> bool:
    """Whether a worker has logged a failed database write that it retries after `wait` seconds or more."""
    return any(
        '"database write failed; retrying"' in line and orjson.loads(line)["retry_in"] >= wait
        for line in workers.output().splitlines()
    )


async def test_postgres_going_down_mid_batch_loses_no_answer_received_meanwhile(
    env: dict[str, str], simulator: Simulator, private_postgres: PrivatePostgres, tmp_path: Path
) -> None:
    await upgrade(private_postgres.url)
    env = {**env, "DATABASE_URL": private_postgres.url}
    await simulator.configure(latency_ms=100)
    submit(env, tmp_path, 150)
    engine = create_engine(private_postgres.url, pool_size=2)
    try:
        workers = Workers(env, tmp_path, 2, "--burst", "--concurrency", "8")
        await wait_for(engine, "SELECT count(*) FROM result", 30, 60)
        await asyncio.to_thread(private_postgres.stop)
        calls_before = len(await simulator.calls())
        # Answers keep arriving for the calls in flight while the database is down: every call in flight has
        # been answered, and the workers have been retrying to store them for over a second (a retry after
        # waits of 0.2, 0.4 and 0.8 s says it waits 1.6 s next).
        await until(lambda: _nothing_in_flight(simulator), "the calls in flight answered")
        await until(lambda: _retrying_for(workers, 1.6), "the workers retrying their writes")
        await asyncio.to_thread(private_postgres.start)
        assert await workers.wait(120) == [0, 0], workers.output()[-3000:]
        await every_request_answered_once(engine, 150)
        assert calls_before > 30
        assert len(await simulator.calls()) == 150, "no answer was lost and paid for again"
        assert "retrying" in workers.output()
    finally:
        await engine.dispose()


async def test_chaos_2000_requests_three_workers_kills_a_redis_flush_and_failing_upstream(
    env: dict[str, str],
    engine: AsyncEngine,
    simulator: Simulator,
    redis: ArqRedis,
    tmp_path: Path,
    record_property: Any,
) -> None:
    n = 2000
    env = {
        **env,
        "ORBATCH_LEASE_SECONDS": "3",
        "ORBATCH_REQUEUE_AFTER": "5",
        "ORBATCH_REQUEST_TIMEOUT": "2",
        "ORBATCH_MAX_ATTEMPTS": "40",
        "ORBATCH_LOG_LEVEL": "WARNING",
    }
    await simulator.configure(
        latency_ms=5,
        chaos_500=0.05,
        chaos_error_in_200=0.05,
        chaos_hang=0.003,
        chaos_hang_seconds=20,
        record_calls=False,
    )
    submit(env, tmp_path, n)
    rng = random.Random(7)
    logs = tmp_path / "chaos"
    logs.mkdir()

    def start_worker() -> subprocess.Popen[bytes]:
        with (logs / f"worker-{time.monotonic_ns()}.log").open("wb") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "jobs", "worker", "--concurrency", "16"],
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=log,
                preexec_fn=die_with_parent,  # noqa: PLW1509 (only prctl, no locks taken)
            )

    live = [start_worker() for _ in range(3)]
    started = time.monotonic()
    kills = 0
    try:
        for threshold, action in [(300, "kill"), (700, "kill"), (900, "flush"), (1100, "kill")]:
            await wait_for(engine, "SELECT count(*) FROM result", threshold, 120)
            if action == "flush":
                await redis.flushdb()
                continue
            victim = live.pop(rng.randrange(len(live)))
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            kills += 1
            live.append(start_worker())
        await wait_for(engine, "SELECT count(*) FROM request WHERE status = 'completed'", n, 150)
    finally:
        await stop_all(live)
    elapsed = time.monotonic() - started
    await every_request_answered_once(engine, n)
    async with engine.connect() as conn:
        per_request = [r[0] for r in await conn.execute(text("SELECT attempts FROM request"))]
    histogram = {str(k): v for k, v in sorted(collections.Counter(per_request).items())}
    stats = await simulator.stats()
    report = {
        "requests": n,
        "seconds": round(elapsed, 1),
        "kills": kills,
        "upstream_calls": stats["calls"],
        "upstream_calls_per_request": histogram,
        "abandoned_by_kills": await scalar(
            engine, "SELECT count(*) FROM attempt WHERE outcome = 'abandoned'"
        ),
    }
    record_property("chaos", orjson.dumps(report).decode())
    print(f"\nchaos: {orjson.dumps(report).decode()}")
    assert kills == 3
    rows = sum(int(k) * v for k, v in histogram.items())
    # Every call has its attempt row; a row without a call is one a kill cut off before it was sent.
    assert stats["calls"] <= rows <= stats["calls"] + report["abandoned_by_kills"]
