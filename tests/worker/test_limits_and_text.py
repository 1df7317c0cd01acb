"""Secrets, odd text and odd settings: clear errors, nothing leaked, no crash."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.core.errors import SettingsError
from jobs.core.settings import Settings, get_settings
from tests.support import ROOT, Simulator, Workers, chat_line, run_cli, write_jsonl


def test_plain_http_to_another_machine_is_refused_since_the_key_would_travel_in_clear(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENROUTER_BASE_URL", "http://openrouter.example.com/api/v1")
    get_settings.cache_clear()
    try:
        with pytest.raises(SettingsError, match="plain http to another machine"):
            get_settings()
    finally:
        get_settings.cache_clear()
    for allowed in (
        "http://127.0.0.1:8787/api/v1",
        "http://localhost:1/api/v1",
        "https://openrouter.ai/api/v1",
    ):
        assert Settings(openrouter_base_url=allowed).openrouter_base_url == allowed
    assert Settings(openrouter_base_url="http://simulator:8787/api/v1", allow_plain_http=True)


def test_a_bad_setting_is_one_clear_error_naming_the_variable_and_importing_the_worker_reads_none(
    env: dict[str, str],
) -> None:
    bad = {**env, "ORBATCH_CONCURRENCY": "0"}
    done = run_cli(bad, "status")
    assert done.returncode == 2
    assert "ORBATCH_CONCURRENCY" in done.stderr
    assert "greater than or equal to 1" in done.stderr
    assert "Traceback" not in done.stderr
    imported = subprocess.run(
        [sys.executable, "-c", "import worker.runner"],
        env=bad,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr


def test_user_text_that_looks_like_markup_is_shown_as_text(env: dict[str, str], tmp_path: Path) -> None:
    done = run_cli(env, "status", "[/x]")
    assert done.returncode == 2
    assert "no batch '[/x]'" in done.stderr
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "x")])
    batch = run_cli(env, "submit", str(path), "--models", "sim/echo", "--name", "[bold]not bold[/] [/x]")
    assert batch.returncode == 0, batch.stderr
    listed = run_cli(env, "status")
    assert listed.returncode == 0, listed.stderr
    assert "[bold]not bold[/] [/x]" in listed.stdout


def test_free_only_refuses_body_fields_that_bill_on_free_models(env: dict[str, str], tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [chat_line("a", "x", plugins=[{"id": "web"}]), chat_line("b", "y", web_search_options={})],
    )
    done = run_cli(env, "submit", str(path), "--models", "sim/echo:free", "--free-only")
    assert done.returncode == 2
    assert "LINE 1: --free-only: 'plugins' can be billed even on a free model" in done.stderr
    # An empty web_search_options is no search: only a field that asks for something is refused.
    assert "LINE 2" not in done.stderr


@pytest.mark.slow
async def test_an_answer_over_the_size_limit_is_refused_with_its_cost_kept(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(rules=[{"match": "huge", "kind": "big", "size": 3 * 1024 * 1024}])
    env = {**env, "ORBATCH_MAX_RESPONSE_BYTES": str(1024 * 1024)}
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "a huge answer please")])
    assert run_cli(env, "submit", str(path), "--models", "sim/echo").returncode == 0
    workers = Workers(env, tmp_path, 1, "--burst")
    assert await workers.wait(60) == [0], workers.output()[-3000:]
    async with engine.connect() as conn:
        attempt = (
            await conn.execute(
                text("SELECT outcome, error_code, error_message, cost, generation_id FROM attempt")
            )
        ).one()
        status = (await conn.execute(text("SELECT status FROM request"))).scalar_one()
    assert (attempt.outcome, attempt.error_code, status) == ("fail", "response_too_large", "failed")
    assert "3145728 bytes" in attempt.error_message
    # Its usage came at the end of the body, past the limit: read from the kept tail, so the cost is known.
    assert attempt.cost is not None
    assert attempt.cost > 0
    assert attempt.generation_id is not None
    exported = run_cli(env, "status", "--json")
    assert orjson.loads(exported.stdout)[0]["request_counts"]["failed"] == 1
