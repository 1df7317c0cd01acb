"""Replies are checked against their schema in bounded time, and a paid answer's cost is kept whatever the check says."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import Simulator, Workers, chat_line, run_cli, write_jsonl
from worker.replycheck import ReplyChecker

BACKTRACKS = {"type": "object", "properties": {"x": {"type": "string", "pattern": "^(a+)+$"}}}
# Thirty a's and a character the pattern cannot end on: about 2^30 ways to fail, minutes of CPU.
EVIL_REPLY = '{"x": "' + "a" * 30 + '!"}'


def asking(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": schema}}


async def test_the_checker_says_why_a_reply_does_not_follow_and_stops_a_check_that_runs_away() -> None:
    checker = ReplyChecker(timeout=1.0)
    try:
        assert await checker.check(BACKTRACKS, '{"x": "aaa"}') is None
        assert "does not follow the schema at x" in str(await checker.check(BACKTRACKS, '{"x": "b"}'))
        started = time.monotonic()
        problem = await checker.check(BACKTRACKS, EVIL_REPLY)
        assert time.monotonic() - started < 5
        assert problem is not None
        assert "took longer than 1 s" in problem
        # The next check runs in a fresh child.
        assert await checker.check(BACKTRACKS, '{"x": "aa"}') is None
    finally:
        await checker.aclose()


def checker_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children() if "worker.replycheck" in " ".join(p.cmdline())]


async def test_a_terminals_ctrl_c_never_reaches_the_checker_and_a_checker_killed_under_a_check_is_replaced() -> (
    None
):
    checker = ReplyChecker(timeout=5.0)
    try:
        assert await checker.check(BACKTRACKS, '{"x": "aaa"}') is None
        (child,) = checker_children()
        # Ctrl-C goes to the terminal's foreground process group, the worker's: the checker is in a session of
        # its own, so it keeps checking the replies of the calls a graceful stop lets finish.
        assert os.getpgid(child.pid) != os.getpgid(0)
        assert os.getsid(child.pid) != os.getsid(0)
        # Killed from outside all the same: the next reply is checked by a new child, not refused for it.
        child.kill()
        child.wait(5)
        assert await checker.check(BACKTRACKS, '{"x": "aa"}') is None
        assert [p.pid for p in checker_children()] != [child.pid]
    finally:
        await checker.aclose()


async def rows(engine: AsyncEngine, sql: str) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql))).all())


@pytest.mark.slow
async def test_a_reply_its_schema_cannot_check_is_invalid_output_with_its_cost_kept(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    # A schema that passes the metaschema at submit but cannot be applied: its $ref cannot be fetched.
    unresolvable = asking({"$ref": "https://schemas.example.com/never-fetched.json"})
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "label this", response_format=unresolvable)])
    done = run_cli(env, "submit", str(path), "--models", "sim/echo", "--max-attempts", "2")
    assert done.returncode == 0, done.stderr
    workers = Workers(env, tmp_path, 1, "--burst")
    assert await workers.wait(60) == [0], workers.output()[-3000:]
    attempts = await rows(
        engine, "SELECT outcome, error_code, error_message, cost FROM attempt ORDER BY number"
    )
    assert [(a.outcome, a.error_code) for a in attempts] == [("retry", "invalid_output")] * 2
    assert "cannot check the reply" in attempts[0].error_message
    # Both answers were paid for: their cost is on their attempts, not lost with an internal error.
    assert all(a.cost is not None and a.cost > 0 for a in attempts)


@pytest.mark.slow
async def test_a_pattern_that_backtracks_neither_stalls_the_worker_nor_gets_calls_paid_twice(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(rules=[{"match": "evil", "kind": "reply", "content": EVIL_REPLY}])
    # A check in the worker's own process would hold the loop for minutes, far past a 10 s lease; a lease this
    # short still shows it, and is long enough that a loaded machine's slow renewal does not lapse it.
    env = {**env, "ORBATCH_REPLY_CHECK_SECONDS": "1", "ORBATCH_LEASE_SECONDS": "10"}
    lines = [chat_line("evil", "evil one", response_format=asking(BACKTRACKS))]
    lines += [chat_line(f"ok{i}", f"fine {i}") for i in range(20)]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    done = run_cli(env, "submit", str(path), "--models", "sim/echo", "--max-attempts", "3")
    assert done.returncode == 0, done.stderr
    workers = Workers(env, tmp_path, 1, "--burst", "--concurrency", "4")
    assert await workers.wait(90) == [0], workers.output()[-3000:]
    evil = await rows(
        engine,
        "SELECT a.outcome, a.error_code, a.cost FROM attempt a JOIN request r ON r.id = a.request_id"
        " WHERE r.custom_id = 'evil' ORDER BY a.number",
    )
    assert [(a.outcome, a.error_code) for a in evil] == [("retry", "invalid_output")] * 3
    assert all(a.cost is not None for a in evil)
    # No lease lapsed while a check ran (the loop kept renewing), so no call was abandoned or made twice.
    assert await rows(engine, "SELECT id FROM attempt WHERE outcome = 'abandoned'") == []
    assert len(await simulator.calls()) == 23
    assert len(await rows(engine, "SELECT 1 FROM request WHERE status = 'completed'")) == 20
