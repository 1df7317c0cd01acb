"""Steering batches: cancel, retry the failed, resume, and re-submitting the same file."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import Simulator, Workers, chat_line, run_cli, write_jsonl


def submit(env: dict[str, str], path: Path, *args: str) -> dict[str, Any]:
    done = run_cli(env, "submit", str(path), "--json", *args)
    assert done.returncode == 0, done.stderr
    return dict(orjson.loads(done.stdout))


def status(env: dict[str, str], batch_id: str) -> dict[str, Any]:
    return dict(orjson.loads(run_cli(env, "status", batch_id, "--json").stdout))


async def scalar(engine: AsyncEngine, sql: str) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql))).scalar_one()


def test_the_same_file_with_the_same_options_is_the_same_batch(env: dict[str, str], tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "x"), chat_line("b", "y")])
    first = submit(env, path, "--models", "sim/echo", "--name", "one")
    again = run_cli(env, "submit", str(path), "--models", "sim/echo", "--name", "renamed")
    assert again.returncode == 0
    assert again.stdout.strip() == first["id"]
    assert "already submitted with these options" in again.stderr
    assert submit(env, path, "--models", "sim/echo", "--new")["id"] != first["id"]
    assert submit(env, path, "--models", "sim/backup")["id"] != first["id"]


async def test_cancel_stops_new_calls_keeps_finished_ones_and_results_stay_exportable(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(latency_ms=200)
    batch = submit(
        env,
        write_jsonl(tmp_path / "in.jsonl", [chat_line(f"c{i}", f"q{i}") for i in range(60)]),
        "--models",
        "sim/echo",
    )
    workers = Workers(env, tmp_path, 1, "--concurrency", "4")
    try:
        while await scalar(engine, "SELECT count(*) FROM result") < 8:
            await asyncio.sleep(0.05)
        done = run_cli(env, "cancel", batch["id"])
        assert done.returncode == 0, done.stderr
        assert "cancelling" in done.stderr
        deadline = time.monotonic() + 30
        while status(env, batch["id"])["status"] != "cancelled":
            assert time.monotonic() < deadline, "the batch never became cancelled"
            await asyncio.sleep(0.1)
    finally:
        for p in workers.processes:
            p.send_signal(signal.SIGTERM)
        await workers.wait(30)
    counts = status(env, batch["id"])["request_counts"]
    assert counts["completed"] >= 8
    assert counts["completed"] + counts["cancelled"] == 60
    # Calls in flight when it was cancelled finished and were kept; none started after.
    assert len(await simulator.calls()) == counts["completed"]
    out = tmp_path / "partial.jsonl"
    assert run_cli(env, "results", batch["id"], "-o", str(out)).returncode == 0
    assert len(out.read_bytes().splitlines()) == counts["completed"]


async def test_retry_failed_runs_failures_again_with_fresh_attempts(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(rules=[{"match": "doomed", "kind": "status", "status": 500, "times": 3}])
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line("ok", "fine"), chat_line("bad", "doomed")])
    batch = submit(env, path, "--models", "sim/echo", "--max-attempts", "2")
    workers = Workers(env, tmp_path, 1, "--burst")
    assert await workers.wait(60) == [0]
    assert status(env, batch["id"])["request_counts"]["failed"] == 1
    done = run_cli(env, "retry", batch["id"], "--failed")
    assert done.returncode == 0
    assert "1 failed requests queued again" in done.stderr
    workers = Workers(env, tmp_path, 1, "--burst")
    assert await workers.wait(60) == [0]
    final = status(env, batch["id"])
    assert (final["status"], final["request_counts"]["completed"], final["request_counts"]["failed"]) == (
        "completed",
        2,
        0,
    )
    assert await scalar(engine, "SELECT attempts FROM request WHERE custom_id = 'bad'") == 4


def test_retry_retries_the_failed_requests_without_being_told_what(
    env: dict[str, str], tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "x")])
    batch = run_cli(env, "submit", str(path), "--models", "sim/echo").stdout.strip()
    done = run_cli(env, "retry", batch)
    assert done.returncode == 0, done.stderr
    assert f"{batch}: 0 failed requests queued again" in done.stderr
