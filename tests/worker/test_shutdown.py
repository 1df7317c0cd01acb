"""Stopping is graceful: on SIGTERM calls in flight finish and are stored, nothing is called twice."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import Simulator, Workers, chat_line, run_cli, until, write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("failures")]


async def count(engine: AsyncEngine, sql: str) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text(sql))).scalar_one())


async def in_flight(simulator: Simulator, n: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while int((await simulator.stats())["in_flight"]) < n:
        assert time.monotonic() < deadline, f"never {n} calls in flight"
        await asyncio.sleep(0.05)


async def said(workers: Workers, text: str) -> bool:
    """Whether the workers' log has a line with `text`."""
    return text in workers.output()


def submit(env: dict[str, str], path: Path) -> str:
    done = run_cli(env, "submit", str(path), "--models", "sim/echo", "--json")
    assert done.returncode == 0, done.stderr
    return str(orjson.loads(done.stdout)["id"])


async def test_sigterm_mid_call_lets_the_calls_finish_stores_them_and_calls_nothing_twice(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(latency_ms=2000)
    submit(env, write_jsonl(tmp_path / "in.jsonl", [chat_line(f"r{i}", f"q {i}") for i in range(12)]))
    workers = Workers(env, tmp_path, 1, "--concurrency", "4")
    await in_flight(simulator, 4)
    stopped_at = time.monotonic()
    workers.processes[0].send_signal(signal.SIGTERM)
    assert await workers.wait(30) == [0], workers.output()[-3000:]
    # It waited for the four calls (2 s each), not for the rest of the batch.
    assert 0.5 < time.monotonic() - stopped_at < 10
    assert await count(engine, "SELECT count(*) FROM request WHERE status = 'completed'") == 4
    assert await count(engine, "SELECT count(*) FROM attempt WHERE outcome = 'abandoned'") == 0
    assert await count(engine, "SELECT count(*) FROM attempt WHERE outcome = 'in_flight'") == 0
    # The rest is waiting, untouched, for the next worker; nobody was called twice.
    assert await count(engine, "SELECT count(*) FROM request WHERE status = 'pending' AND attempts = 0") == 8
    calls = await simulator.calls()
    assert len(calls) == 4
    again = Workers(env, tmp_path, 1, "--burst", "--concurrency", "4")
    assert await again.wait(60) == [0]
    assert await count(engine, "SELECT count(*) FROM request WHERE status = 'completed'") == 12
    assert len(await simulator.calls()) == 12


async def test_a_second_sigterm_stops_at_once_and_gives_the_calls_back(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(latency_ms=20_000)
    submit(env, write_jsonl(tmp_path / "in.jsonl", [chat_line(f"r{i}", f"q {i}") for i in range(3)]))
    workers = Workers(env, tmp_path, 1, "--concurrency", "3")
    await in_flight(simulator, 3)
    stopped_at = time.monotonic()
    workers.processes[0].send_signal(signal.SIGTERM)
    # The second SIGTERM comes while the worker waits for its calls after the first, as its log says.
    await until(
        lambda: said(workers, "stopping: letting calls in flight finish"),
        "the worker stopping after the first SIGTERM",
    )
    workers.processes[0].send_signal(signal.SIGTERM)
    assert await workers.wait(15) == [0]
    assert time.monotonic() - stopped_at < 10
    # Given back, not failed: their attempts are `abandoned` and spend nothing; they run again later.
    assert await count(engine, "SELECT count(*) FROM attempt WHERE outcome = 'abandoned'") == 3
    assert await count(engine, "SELECT count(*) FROM request WHERE status = 'pending' AND failures = 0") == 3
