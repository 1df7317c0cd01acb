"""The API key is a secret: it appears in no log line, exception text, database row or output file."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.core.logs import configure_logging, get_logger
from jobs.core.settings import Settings
from tests.support import TEST_API_KEY, Simulator, Workers, chat_line, run_cli, write_jsonl


async def outages(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(
            (await conn.execute(text("SELECT count(*) FROM attempt WHERE outcome = 'outage'"))).scalar_one()
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_the_key_leaks_nowhere_through_successes_errors_and_outages(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    env = {**env, "ORBATCH_LOG_LEVEL": "DEBUG"}
    await simulator.configure(
        rules=[
            {"match": "boom", "kind": "status", "status": 500, "times": 1},
            {"match": "cut", "kind": "reset", "times": 1},
            {"match": "refused", "kind": "status", "status": 400},
        ]
    )
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [chat_line("a", "fine"), chat_line("b", "boom"), chat_line("c", "cut"), chat_line("d", "refused")],
    )
    submitted = run_cli(env, "submit", str(path), "--models", "sim/echo")
    batch_id = submitted.stdout.strip()
    workers = Workers(env, tmp_path, 1, "--burst")
    assert await workers.wait(60) == [0]
    # A second batch against an OpenRouter that cannot be reached at all.
    unreachable = {
        **env,
        "OPENROUTER_BASE_URL": f"http://127.0.0.1:{free_port()}/api/v1",
        "ORBATCH_MAX_ATTEMPTS": "2",
    }
    down = run_cli(
        unreachable,
        "submit",
        str(write_jsonl(tmp_path / "down.jsonl", [chat_line("x", "y")])),
        "--models",
        "sim/echo",
    )
    down_workers = Workers(
        {**unreachable, "ORBATCH_BREAKER_PROBE_BASE": "0.2", "ORBATCH_BREAKER_PROBE_MAX": "0.5"},
        tmp_path,
        1,
        "--burst",
    )
    # An unreachable OpenRouter fails nothing: the worker waits and probes. Once it has probed a few times the
    # batch is cancelled, and the burst worker ends.
    deadline = time.monotonic() + 60
    while await outages(engine) < 3:
        assert time.monotonic() < deadline, down_workers.output()[-3000:]
        await asyncio.sleep(0.2)
    cancelled = run_cli(unreachable, "cancel", down.stdout.strip())
    assert await down_workers.wait(60) == [0]

    out, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    exported = run_cli(env, "results", batch_id, "-o", str(out), "--errors", str(errors))
    status = run_cli(env, "status", batch_id, "--json")
    texts = {
        "worker logs": workers.output() + down_workers.output(),
        "cli output": "".join(p.stdout + p.stderr for p in (submitted, down, cancelled, exported, status)),
        "results": out.read_text(),
        "errors": errors.read_text(),
    }
    assert "connection" in texts["worker logs"].lower(), "the outage was logged"
    async with engine.connect() as conn:
        for table in ("batch", "request", "attempt", "result"):
            dump = (
                await conn.execute(text(f"SELECT coalesce(string_agg(t::text, ''), '') FROM {table} t"))  # noqa: S608 - SQL built from constants; every value is a bind parameter
            ).scalar_one()
            texts[f"table {table}"] = dump
    for where, content in texts.items():
        assert TEST_API_KEY not in content, f"the key leaked into {where}"
        assert TEST_API_KEY[10:30] not in content, f"part of the key leaked into {where}"


def test_settings_never_show_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", TEST_API_KEY)
    settings = Settings()
    assert TEST_API_KEY not in repr(settings)
    assert TEST_API_KEY not in str(settings.model_dump())
    assert settings.api_key() == TEST_API_KEY


def test_a_log_line_that_would_carry_the_key_is_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", secrets=[TEST_API_KEY], json=True)
    try:
        get_logger("test").warning("oops", header=f"Bearer {TEST_API_KEY}")
        logging.getLogger("some.library").warning("failed with %s", TEST_API_KEY)
        try:
            raise RuntimeError(f"bad key {TEST_API_KEY}")
        except RuntimeError:
            get_logger("test").exception("crashed")
    finally:
        configure_logging("WARNING", secrets=[])
    logged = capsys.readouterr().err
    assert TEST_API_KEY not in logged
    assert logged.count("[redacted]") >= 3


def test_orbatch_run_leaks_the_key_into_neither_its_output_nor_its_results(
    env: dict[str, str], tmp_path: Path
) -> None:
    env = {**env, "ORBATCH_LOG_LEVEL": "DEBUG"}
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "fine"), chat_line("b", "more")])
    out, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    done = run_cli(env, "run", str(path), "-o", str(out), "--errors", str(errors), "--models", "sim/echo")
    assert done.returncode == 0, done.stderr
    for where, content in {
        "run output": done.stdout + done.stderr,
        "results": out.read_text(),
        "errors": errors.read_text(),
    }.items():
        assert TEST_API_KEY not in content, f"the key leaked into {where}"
