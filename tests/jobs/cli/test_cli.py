"""The command line as a user types it: output shapes, exit codes and messages."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import orjson
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.core.db import alembic_config, drop_database
from jobs.simulator.catalogue import CATALOG_FILE
from tests.conftest import Services
from tests.support import ROOT, Simulator, chat_line, run_cli, wait_until, write_jsonl


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
    # Submitted, but a script learns that lines were left out: exit status 5.
    assert done.returncode == 5, done.stderr
    assert "skipped LINE 2: not valid JSON" in done.stderr
    assert "1 bad lines were skipped (--skip-invalid)" in done.stderr
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


def test_version(env: dict[str, str]) -> None:
    done = run_cli(env, "--version")
    assert done.returncode == 0
    assert done.stdout.startswith("orbatch ")


def test_a_batch_is_found_by_its_name_the_latest_one_saying_so_when_the_name_is_shared(
    env: dict[str, str], tmp_path: Path
) -> None:
    first = write_jsonl(tmp_path / "a.jsonl", [chat_line("a", "x")])
    second = write_jsonl(tmp_path / "b.jsonl", [chat_line("b", "y")])
    older = run_cli(env, "submit", str(first), "--models", "sim/echo", "--name", "nightly").stdout.strip()
    newer = run_cli(env, "submit", str(second), "--models", "sim/echo", "--name", "nightly").stdout.strip()
    status = run_cli(env, "status", "nightly", "--json")
    assert status.returncode == 0, status.stderr
    assert orjson.loads(status.stdout)["id"] == newer != older
    assert "2 batches are named 'nightly'; this is the latest" in status.stderr


async def test_defaults_and_metadata_reach_every_request_and_the_status(
    env: dict[str, str], engine: AsyncEngine, tmp_path: Path
) -> None:
    records = write_jsonl(tmp_path / "records.jsonl", [{"text": "good"}, {"text": "bad", "custom_id": "r2"}])
    done = run_cli(
        env,
        "submit",
        str(records),
        "--models",
        "sim/echo",
        "--template",
        "Label: {text}",
        "--temperature",
        "0.2",
        "--max-tokens",
        "5",
        "--param",
        'stop=["###"]',
        "--param",
        "user=labeller",
        "--metadata",
        "team=data",
        "--metadata",
        "ticket=42",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["metadata"] == {"team": "data", "ticket": "42"}
    async with engine.connect() as conn:
        bodies = (await conn.execute(text("SELECT body FROM request ORDER BY id"))).scalars().all()
    for body in bodies:
        assert (body["temperature"], body["max_tokens"], body["stop"], body["user"]) == (
            0.2,
            5,
            ["###"],
            "labeller",
        )
    refused = run_cli(
        env, "submit", str(records), "--models", "sim/echo", "--template", "{text}", "--param", "top_p=high"
    )
    assert refused.returncode == 2
    assert '"top_p" must be a number' in refused.stderr


async def test_delete_removes_a_finished_batch_and_every_row_and_refuses_a_running_one(
    env: dict[str, str], engine: AsyncEngine, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "x"), chat_line("b", "y")])
    batch = run_cli(env, "submit", str(path), "--models", "sim/echo").stdout.strip()
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE request SET status = 'running'"))
    refused = run_cli(env, "delete", batch, "--yes")
    assert refused.returncode == 2
    assert "cancel it first" in refused.stderr
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE request SET status = 'completed'"))
        await conn.execute(text("UPDATE batch SET status = 'completed'"))
    done = run_cli(env, "delete", batch, "--yes")
    assert done.returncode == 0, done.stderr
    assert f"deleted {batch} and its 2 requests" in done.stderr
    async with engine.connect() as conn:
        for table in ("batch", "request", "attempt", "result", "batch_tally"):
            assert (await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one() == 0, table  # noqa: S608 - table names of this test


def test_models_lists_the_catalogue_with_prices_and_free_variants(env: dict[str, str]) -> None:
    done = run_cli(env, "models", "--free", "--json")
    assert done.returncode == 0, done.stderr
    rows = orjson.loads(done.stdout)
    assert rows
    assert all(r["id"].endswith(":free") for r in rows)
    assert "google/gemma-4-31b-it:free" in {r["id"] for r in rows}
    table = run_cli(env, "models")
    assert "anthropic/" in table.stdout


def _unreachable_upstream() -> str:
    """An OPENROUTER_BASE_URL nothing answers at, as on a machine with no network."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/api/v1"


def test_models_with_no_network_lists_the_copy_of_openrouters_list_shipped_with_orbatch_and_says_so(
    env: dict[str, str],
) -> None:
    saved = orjson.loads((ROOT / "jobs" / "simulator" / CATALOG_FILE).read_bytes())["snapshot"]
    offline = {**env, "OPENROUTER_BASE_URL": _unreachable_upstream()}
    done = run_cli(offline, "models", "--free", "--json")
    assert done.returncode == 0, done.stderr
    assert "warning: cannot read the model list from http://127.0.0.1:" in done.stderr
    assert f"OpenRouter's list as saved on {saved}, the copy shipped with orbatch" in done.stderr
    # stdout is the JSON array it always is.
    ids = [row["id"] for row in orjson.loads(done.stdout)]
    assert "google/gemma-4-31b-it:free" in ids
    assert all(i.endswith(":free") for i in ids)
    # OpenRouter's own list only: neither the models it withdrew that the simulator keeps, nor the tests' own.
    assert "meta-llama/llama-3.3-70b-instruct:free" not in ids
    assert not [i for i in ids if i.startswith("sim/")]
    table = run_cli(offline, "models")
    assert table.returncode == 0, table.stderr
    assert "anthropic/" in table.stdout
    assert "models from OpenRouter's list" in table.stdout


def test_models_simulator_lists_what_the_simulators_get_models_answers_with_no_network(
    env: dict[str, str],
) -> None:
    served = orjson.loads(run_cli(env, "models", "--json").stdout)  # GET /models of the tests' simulator
    offline = {**env, "OPENROUTER_BASE_URL": _unreachable_upstream()}
    done = run_cli(offline, "models", "--simulator", "--json")
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout) == served
    assert "warning" not in done.stderr
    assert "models from the simulator's catalogue" in done.stderr
    ids = {row["id"] for row in served}
    assert {"sim/echo", "sim/echo:free", "meta-llama/llama-3.3-70b-instruct:free"} <= ids
    free = run_cli(offline, "models", "--simulator", "--free", "--json")
    assert orjson.loads(free.stdout) == [row for row in served if row["free"]]
    table = run_cli(offline, "models", "--simulator")
    assert "sim/last-resort" in table.stdout


async def test_results_go_to_stdout_unless_o_names_a_file_and_what_was_written_is_counted_on_stderr(
    env: dict[str, str], simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(rules=[{"match": "doomed", "kind": "status", "status": 400, "message": "bad"}])
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line("ok", "fine"), chat_line("bad", "doomed")])
    batch = run_cli(env, "submit", str(path), "--models", "sim/echo", "--name", "stdout").stdout.strip()
    assert run_cli(env, "worker", "--burst").returncode == 0
    for dash in ((), ("-o", "-")):
        done = run_cli(env, "results", "stdout", *dash)
        assert done.returncode == 0, done.stderr
        assert [orjson.loads(line)["custom_id"] for line in done.stdout.splitlines()] == ["ok"]
        assert "wrote 1 results to stdout (1 failed)" in done.stderr
    assert not (ROOT / "-").exists()
    records = run_cli(
        env, "results", batch, "--format", "records", "--errors", str(tmp_path / "errors.jsonl")
    )
    assert [orjson.loads(line) for line in records.stdout.splitlines()] == [
        {"custom_id": "ok", "answer": "echo: fine"}
    ]
    assert f"and 1 failures to {tmp_path / 'errors.jsonl'}" in records.stderr
    assert orjson.loads((tmp_path / "errors.jsonl").read_bytes())["custom_id"] == "bad"
    # The failures may go to stdout while the results go to a file.
    failures = run_cli(env, "results", batch, "-o", str(tmp_path / "out.jsonl"), "--errors", "-")
    assert [orjson.loads(line)["custom_id"] for line in failures.stdout.splitlines()] == ["bad"]
    assert orjson.loads((tmp_path / "out.jsonl").read_bytes())["custom_id"] == "ok"
    # Never both on stdout, nor the counts of --json mixed into the results.
    both = run_cli(env, "results", batch, "-o", "-", "--errors", "-")
    assert (both.returncode, both.stdout) == (2, "")
    assert "--errors -: the results already go to stdout; give --errors a file" in both.stderr
    counted = run_cli(env, "results", batch, "--json")
    assert (counted.returncode, counted.stdout) == (2, "")
    assert "--json prints the counts on stdout, where the results would go: give -o FILE" in counted.stderr


def test_run_writes_its_results_to_stdout_with_o_dash_and_everything_else_to_stderr(
    env: dict[str, str], tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "x"), chat_line("b", "y")])
    both = run_cli(env, "run", str(path), "-o", "-", "--errors", "-", "--models", "sim/echo")
    assert both.returncode == 2
    assert "the results already go to stdout" in both.stderr
    done = run_cli(env, "run", str(path), "-o", "-", "--models", "sim/echo")
    assert done.returncode == 0, done.stderr
    assert [orjson.loads(line)["custom_id"] for line in done.stdout.splitlines()] == ["a", "b"]
    assert "2 results written to stdout" in done.stderr
    assert not (ROOT / "-").exists()


def _asleep_on_a_timer(pid: int) -> bool:
    """Whether the process's main thread sleeps in the kernel on a timer (Python's time.sleep)."""
    try:
        return Path(f"/proc/{pid}/wchan").read_text() == "hrtimer_nanosleep"
    except OSError:
        return False


def test_a_worker_without_a_key_can_wait_for_one_instead_of_exiting(
    env: dict[str, str], tmp_path: Path
) -> None:
    waiting = subprocess.Popen(
        [sys.executable, "-m", "jobs", "worker"],
        env={**env, "OPENROUTER_API_KEY": "", "ORBATCH_WAIT_FOR_KEY": "1"},
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert waiting.stderr is not None
        line = waiting.stderr.readline()
        assert "OPENROUTER_API_KEY is not set" in line
        assert "waiting (ORBATCH_WAIT_FOR_KEY)" in line
        # It said so and went to sleep until it looks again (every KEY_WAIT_SECONDS, a minute): the kernel shows
        # its main thread asleep on a timer, and it is still running, not on its way out.
        wait_until(lambda: _asleep_on_a_timer(waiting.pid), "the worker asleep, waiting for its key", 30)
        assert waiting.poll() is None
    finally:
        waiting.kill()
        waiting.wait()
        if waiting.stderr is not None:
            waiting.stderr.close()
    key = tmp_path / "key"
    key.write_text("sk-or-v1-from-a-file\n")
    # The key from a file (a Docker secret): the worker starts and, in burst mode, ends.
    done = run_cli(
        {**env, "OPENROUTER_API_KEY": "", "OPENROUTER_API_KEY_FILE": str(key)}, "worker", "--burst"
    )
    assert done.returncode == 0, done.stderr


def test_a_worker_says_where_it_works_each_batch_it_takes_up_and_sees_finish(
    env: dict[str, str], tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "x"), chat_line("b", "y")])
    batch_id = run_cli(env, "submit", str(path), "--models", "sim/echo").stdout.strip()
    done = run_cli(env, "worker", "--burst", "--concurrency", "3")
    assert done.returncode == 0, done.stderr
    lines = [orjson.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    started = next(line for line in lines if line["event"] == "worker started")
    assert started["concurrency"] == 3
    # In front of the suite's simulator: the queue of simulated batches.
    assert started["queue"] == env["ORBATCH_QUEUE_NAME"] + ":sim"
    # Where it works, without credentials; the simulator's own limits.
    assert "@" not in started["postgres"]
    assert started["simulated"] is True
    events = [(line["event"], line.get("batch_id")) for line in lines]
    assert ("working on a batch", batch_id) in events
    assert ("batch finished", batch_id) in events
