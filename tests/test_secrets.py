"""The API key is a secret: it appears in no log line, exception text, database row or output file."""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from collections import Counter
from pathlib import Path

import orjson
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


async def everything_stored(engine: AsyncEngine) -> dict[str, str]:
    """Every table of the database as text, row by row: whatever orbatch wrote, wherever it wrote it."""
    dumps: dict[str, str] = {}
    async with engine.connect() as conn:
        tables = (
            await conn.execute(
                text(
                    "SELECT table_name FROM information_schema.tables"
                    " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY 1"
                )
            )
        ).scalars()
        for table in list(tables):
            quoted = '"' + table.replace('"', '""') + '"'
            dumps[f"table {table}"] = (
                await conn.execute(text(f"SELECT coalesce(string_agg(t::text, ''), '') FROM {quoted} t"))  # noqa: S608 - a table name of the database's own, quoted
            ).scalar_one()
    return dumps


@pytest.mark.slow
async def test_the_key_leaks_nowhere_through_the_batch_lane_and_an_embeddings_batch(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    canary = f"sk-or-v1-canary-{secrets.token_hex(16)}"
    env = {
        **env,
        "OPENROUTER_API_KEY": canary,
        "ORBATCH_LOG_LEVEL": "DEBUG",
        "ORBATCH_REMOTE_POLL_SECONDS": "0.2",
        "ORBATCH_REMOTE_MAX_REQUESTS": "2",
    }
    # An upstream that echoes the key in what it says: a refused create, and a line the provider failed.
    await simulator.configure(
        rules=[
            {
                "route": "batches.create",
                "kind": "status",
                "status": 400,
                "message": f"invalid request from {canary}",
                "times": 1,
            },
            {"match": "shaky", "kind": "line_error", "message": f"provider refused {canary}", "times": 1},
        ]
    )
    schema = {
        "type": "json_schema",
        "json_schema": {
            "name": "label",
            "schema": {
                "type": "object",
                "properties": {"label": {"enum": ["a", "b"]}},
                "required": ["label"],
            },
        },
    }
    chats = [
        chat_line("c0", "fine 0"),
        chat_line("c1", "fine 1", response_format=schema),
        chat_line("c2", "shaky 2"),
        chat_line("c3", "fine 3", response_format=schema),
    ]
    submitted = run_cli(
        env,
        "submit",
        str(write_jsonl(tmp_path / "chats.jsonl", chats)),
        "--models",
        "sim/echo",
        "--lane",
        "batch",
        "--heal",
    )
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.strip()
    workers = Workers(env, tmp_path, 1, "--burst")
    assert await workers.wait(120) == [0], workers.output()[-3000:]
    # Embeddings, through the batch lane and live, each by `orbatch run`.
    vectors = write_jsonl(
        tmp_path / "vectors.jsonl", [{"custom_id": f"v{i}", "input": [f"text {i}"]} for i in range(3)]
    )
    outputs = {
        name: (tmp_path / f"{name}.jsonl", tmp_path / f"{name}-errors.jsonl")
        for name in ("chat", "embeddings-batch", "embeddings-live")
    }
    runs = [
        run_cli(
            env, "run", str(vectors), "-o", str(out), "--errors", str(err), "--models", "sim/embed", *lane
        )
        for lane, (out, err) in (
            (["--lane", "batch"], outputs["embeddings-batch"]),
            ([], outputs["embeddings-live"]),
        )
    ]
    assert all(r.returncode == 0 for r in runs), [r.stderr[-2000:] for r in runs]
    out, err = outputs["chat"]
    exported = run_cli(env, "results", batch_id, "-o", str(out), "--errors", str(err))
    status = run_cli(env, "status", batch_id, "--json")
    usage = run_cli(env, "usage", "--json")
    assert exported.returncode == 0, exported.stderr
    # The lane ran: a refused create (its requests live), a remote batch whose failed line went live, the rest
    # answered there; embeddings in a remote batch of their own.
    remote = await simulator.batches()
    sent: Counter[str] = Counter()
    for remote_batch in remote:
        sent[remote_batch["endpoint"]] += len(remote_batch["lines"])
    assert sent == {"/v1/chat/completions": 2, "/v1/embeddings": 3}
    texts = {
        "worker logs": workers.output(),
        "cli output": "".join(p.stdout + p.stderr for p in (submitted, *runs, exported, status, usage)),
        "simulator calls": orjson.dumps(await simulator.calls()).decode(),
        "simulator batches": orjson.dumps(remote).decode(),
        "simulator log": simulator.log_path.read_text(errors="replace"),
        **{path.name: path.read_text() for pair in outputs.values() for path in pair if path.exists()},
        **await everything_stored(engine),
    }
    assert "remote batch created" in texts["worker logs"]
    assert len(texts["embeddings-batch.jsonl"].splitlines()) == 3
    # What the upstream echoed was stored and logged with the key taken out.
    assert "[redacted]" in texts["table remote_batch"]
    assert "[redacted]" in texts["table attempt"]
    for where, content in texts.items():
        assert canary not in content, f"the key leaked into {where}"
        assert canary[10:30] not in content, f"part of the key leaked into {where}"


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
