"""Worker heartbeats: every live worker is listed with what it is and does; a dead one drops out by itself."""

from __future__ import annotations

import asyncio
import importlib.metadata
import signal
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from arq.connections import ArqRedis

from jobs.scheduling.roster import Heartbeat, read_heartbeats, write_heartbeat
from tests.support import Simulator, Workers, chat_line, run_cli, write_jsonl

pytestmark = pytest.mark.slow

# Fast beats so a killed worker drops out within a couple of seconds; the TTL is three beats.
BEAT = 0.5


async def beats_until(
    redis: ArqRedis, queue: str, done: Callable[[list[Heartbeat]], bool], seconds: float
) -> list[Heartbeat]:
    deadline = time.monotonic() + seconds
    while True:
        beats = await read_heartbeats(redis, queue)
        if done(beats):
            return beats
        assert time.monotonic() < deadline, f"heartbeats never got there: {beats}"
        await asyncio.sleep(0.05)


def workers_json(env: dict[str, str]) -> list[dict[str, Any]]:
    done = run_cli(env, "workers", "--json")
    assert done.returncode == 0, done.stderr
    return list(orjson.loads(done.stdout))


async def test_started_workers_are_listed_and_a_sigkilled_one_drops_out_within_its_heartbeat_ttl(
    env: dict[str, str], redis: ArqRedis, tmp_path: Path
) -> None:
    env = {**env, "ORBATCH_HEARTBEAT_SECONDS": str(BEAT)}
    queue = env["ORBATCH_QUEUE_NAME"]
    workers = Workers(env, tmp_path, 2, "--concurrency", "3")
    try:
        await beats_until(redis, queue, lambda b: len(b) == 2, 60)
        listed = workers_json(env)
        assert {w["pid"] for w in listed} == {p.pid for p in workers.processes}
        for w in listed:
            assert set(w) == {
                "id",
                "host",
                "pid",
                "version",
                "queue",
                "concurrency",
                "in_flight",
                "tasks",
                "answered",
                "started_at",
                "last_activity",
                "beat_at",
                "stopping",
                "simulated",
            }
            assert w["host"] == socket.gethostname()
            assert w["id"].startswith(f"{w['host']}:{w['pid']}:")
            assert w["version"] == importlib.metadata.version("orbatch")
            # In front of the suite's simulator, a worker takes its jobs from the simulated batches' queue.
            assert w["queue"] == f"{queue}:sim"
            assert w["concurrency"] == 3
            assert (w["in_flight"], w["tasks"], w["answered"]) == (0, 0, 0)
            assert w["last_activity"] is None
            assert w["stopping"] is False
            assert w["simulated"] is True  # the tests' upstream is the simulator, and its GET /key says so
            started, beat = datetime.fromisoformat(w["started_at"]), datetime.fromisoformat(w["beat_at"])
            assert started <= beat <= datetime.now(UTC)

        killed, survivor = workers.processes
        killed.kill()
        killed_at = time.monotonic()
        left = await beats_until(redis, queue, lambda b: len(b) == 1, 30)
        # Gone within its TTL (three beats), with a little room for a loaded machine.
        assert time.monotonic() - killed_at < 3 * BEAT + 2.0
        assert left[0].pid == survivor.pid

        # A worker that stops cleanly takes its heartbeat with it, without waiting for the TTL.
        survivor.send_signal(signal.SIGTERM)
        assert await workers.wait(30) == [-signal.SIGKILL, 0]
        assert await read_heartbeats(redis, queue) == []
        assert workers_json(env) == []
    finally:
        workers.kill()


async def test_a_working_workers_heartbeat_tells_its_calls_in_flight_and_what_it_answered(
    env: dict[str, str], redis: ArqRedis, simulator: Simulator, tmp_path: Path
) -> None:
    env = {**env, "ORBATCH_HEARTBEAT_SECONDS": str(BEAT)}
    queue = env["ORBATCH_QUEUE_NAME"]
    await simulator.configure(latency_ms=400)
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"r{i}", f"question {i}") for i in range(24)])
    assert run_cli(env, "submit", str(path), "--models", "sim/echo").returncode == 0
    workers = Workers(env, tmp_path, 1, "--concurrency", "4")
    try:
        busy = await beats_until(redis, queue, lambda b: len(b) == 1 and b[0].in_flight > 0, 60)
        assert 0 < busy[0].in_flight <= busy[0].tasks <= 4
        assert busy[0].last_activity is not None
        done = await beats_until(redis, queue, lambda b: len(b) == 1 and b[0].answered == 24, 60)
        assert done[0].in_flight == 0
    finally:
        workers.kill()


async def test_workers_are_shown_in_a_table_whose_text_is_never_read_as_markup(
    env: dict[str, str], redis: ArqRedis
) -> None:
    queue = env["ORBATCH_QUEUE_NAME"]
    now = datetime.now(UTC)
    await write_heartbeat(
        redis,
        queue,
        Heartbeat(
            id="[bold]box[/bold]:41:abc",
            host="[bold]box[/bold]",
            pid=41,
            version="9.9.9",
            queue="[/]odd",
            concurrency=8,
            in_flight=2,
            tasks=3,
            answered=17,
            started_at=now,
            last_activity=now,
            beat_at=now,
        ),
        30,
    )
    shown = run_cli(env, "workers")
    assert shown.returncode == 0, shown.stderr
    assert "[bold]box[/bold]:41" in shown.stdout
    assert "[/]odd" in shown.stdout
    assert "2/8" in shown.stdout
    assert "working" in shown.stdout

    await redis.flushdb()
    none = run_cli(env, "workers")
    assert none.returncode == 0
    assert "no live workers" in none.stderr
