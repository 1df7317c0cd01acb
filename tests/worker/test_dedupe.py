"""--dedupe: an identical request (same chain, messages, parameters) is answered from a stored result, not called."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import Simulator, Workers, chat_line, run_cli, write_jsonl


async def rows(engine: AsyncEngine, sql: str) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql))).all())


async def run(
    env: dict[str, str], tmp_path: Path, name: str, lines: list[dict[str, Any]], *args: str
) -> None:
    path = write_jsonl(tmp_path / name, lines)
    assert run_cli(env, "submit", str(path), "--models", "sim/echo", *args).returncode == 0
    workers = Workers(env, tmp_path, 1, "--burst", "--concurrency", "8")
    assert await workers.wait(60) == [0], workers.output()[-3000:]


LINES = [
    chat_line("a1", "same question"),
    chat_line("a2", "same question"),
    chat_line("b", "another one"),
    chat_line("a3", "same question"),
    chat_line("c", "same question", temperature=0.5),
]


async def test_identical_requests_in_a_batch_are_called_once(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(latency_ms=100)
    await run(env, tmp_path, "in.jsonl", LINES, "--dedupe")
    # "same question" three times, once with another temperature (a different request), and "another one".
    assert len(await simulator.calls()) == 3
    answers = dict(
        await rows(
            engine, "SELECT q.custom_id, r.content FROM result r JOIN request q ON q.id = r.request_id"
        )
    )
    assert answers["a1"] == answers["a2"] == answers["a3"] == "echo: same question"
    reused = await rows(
        engine,
        "SELECT q.custom_id, a.reused_from, a.cost FROM attempt a JOIN request q ON q.id = a.request_id"
        " WHERE a.outcome = 'reused' ORDER BY q.custom_id",
    )
    assert len(reused) == 2
    assert all(r.reused_from is not None and r.cost == 0 for r in reused)


async def test_a_later_batch_reuses_answers_of_an_earlier_one(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await run(
        env, tmp_path, "first.jsonl", [chat_line("x", "shared"), chat_line("y", "only first")], "--dedupe"
    )
    assert len(await simulator.calls()) == 2
    await run(env, tmp_path, "second.jsonl", [chat_line("later", "shared")], "--dedupe")
    assert len(await simulator.calls()) == 2
    assert await rows(
        engine,
        "SELECT content FROM result r JOIN request q ON q.id = r.request_id WHERE q.custom_id = 'later'",
    ) == [("echo: shared",)]


async def test_without_dedupe_every_request_is_called(
    env: dict[str, str], simulator: Simulator, tmp_path: Path
) -> None:
    await run(env, tmp_path, "in.jsonl", LINES)
    assert len(await simulator.calls()) == 5
