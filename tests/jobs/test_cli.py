"""The command line as a user types it: output shapes, exit codes and messages."""

from __future__ import annotations

import uuid
from pathlib import Path

import asyncpg
import orjson
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.db import alembic_config, drop_database
from tests.conftest import Services
from tests.support import chat_line, run_cli, write_jsonl


def test_submit_json_prints_one_object_with_id_status_and_counts(env: dict[str, str], tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "x"), chat_line("b", "y")])
    done = run_cli(env, "submit", str(path), "--models", "sim/echo", "--name", "nightly", "--json")
    assert done.returncode == 0, done.stderr
    batch = orjson.loads(done.stdout)
    assert batch["id"].startswith("batch_")
    assert batch["status"] == "in_progress"
    assert batch["name"] == "nightly"
    assert batch["request_counts"]["total"] == 2


def test_submit_without_json_prints_just_the_batch_id(env: dict[str, str], tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "x")])
    done = run_cli(env, "submit", str(path), "--models", "sim/echo")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("batch_")
    assert len(done.stdout.strip().split()) == 1


async def test_a_bad_file_exits_2_naming_each_bad_line_and_stores_nothing(
    env: dict[str, str], engine: AsyncEngine, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "x"), b"nope", chat_line("a", "y")])
    done = run_cli(env, "submit", str(path), "--models", "sim/echo")
    assert done.returncode == 2
    assert "LINE 2: not valid JSON" in done.stderr
    assert 'LINE 3: duplicate custom_id "a" (first on line 1)' in done.stderr
    assert "nothing was queued" in done.stderr
    assert done.stdout == ""
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM batch"))).scalar_one() == 0


def test_skip_invalid_queues_the_rest_and_says_what_it_skipped(env: dict[str, str], tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "x"), b"nope"])
    done = run_cli(env, "submit", str(path), "--models", "sim/echo", "--skip-invalid", "--json")
    assert done.returncode == 0, done.stderr
    assert "skipped LINE 2: not valid JSON" in done.stderr
    assert orjson.loads(done.stdout)["request_counts"]["total"] == 1


def test_status_json_has_counts_and_cost(env: dict[str, str], tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "x")])
    batch_id = orjson.loads(run_cli(env, "submit", str(path), "--models", "sim/echo", "--json").stdout)["id"]
    status = orjson.loads(run_cli(env, "status", batch_id, "--json").stdout)
    assert status["id"] == batch_id
    assert status["status"] == "in_progress"
    assert {"total": 1, "completed": 0, "failed": 0}.items() <= status["request_counts"].items()
    assert status["cost"] == "0"


def test_an_unknown_batch_is_a_clear_error(env: dict[str, str]) -> None:
    done = run_cli(env, "status", "batch_nope")
    assert done.returncode == 2
    assert "no batch 'batch_nope'" in done.stderr


def test_bad_models_option_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "x")])
    done = run_cli(env, "submit", str(path), "--models", ",,")
    assert done.returncode == 2
    assert "--models" in done.stderr


def test_a_worker_without_a_key_refuses_to_start(env: dict[str, str]) -> None:
    done = run_cli({**env, "OPENROUTER_API_KEY": ""}, "worker", "--burst")
    assert done.returncode == 2
    assert "OPENROUTER_API_KEY is not set" in done.stderr


async def test_db_upgrade_creates_a_missing_database(env: dict[str, str], services: Services) -> None:
    url = services.database(f"orbatch_new_{uuid.uuid4().hex[:8]}")
    try:
        done = run_cli({**env, "DATABASE_URL": url}, "db", "upgrade")
        assert done.returncode == 0, done.stderr
        assert "Created the database" in done.stderr
        conn = await asyncpg.connect(url)
        try:
            head = ScriptDirectory.from_config(alembic_config(env["DATABASE_URL"])).get_current_head()
            assert await conn.fetchval("SELECT version_num FROM alembic_version") == head
        finally:
            await conn.close()
    finally:
        await drop_database(url)
