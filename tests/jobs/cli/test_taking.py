"""Taking a file in from the command line: what `submit` says about the batch it made or found, and its workers."""

from __future__ import annotations

import time
from pathlib import Path

from tests.support import Simulator, Workers, chat_line, run_cli, write_jsonl


async def test_a_file_submitted_again_says_its_bad_lines_once_not_as_more_skipped_lines(
    env: dict[str, str], tmp_path: Path
) -> None:
    rows = [chat_line("a", "x"), b"{not json", chat_line("b", "y"), b"[]", b"42"]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    first = run_cli(env, "submit", str(path), "--models", "sim/echo", "--skip-invalid")
    assert first.returncode == 5, first.stderr
    assert first.stderr.count("skipped LINE") == 3
    again = run_cli(env, "submit", str(path), "--models", "sim/echo", "--skip-invalid")
    assert again.returncode == 5, again.stderr
    assert again.stdout == first.stdout
    assert "skipped" not in again.stderr.replace("were skipped (--skip-invalid)", "")
    assert f"3 bad lines of {path} were left out when it was submitted (--skip-invalid)" in again.stderr


async def test_submit_says_when_no_live_worker_can_take_the_batch_and_not_when_one_can(
    env: dict[str, str], simulator: Simulator, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "x")])
    alone = run_cli(env, "submit", str(path), "--models", "sim/echo")
    assert alone.returncode == 0, alone.stderr
    # The suite's simulator is the upstream: the batch is simulated, and only a worker before a simulator takes it.
    assert "no worker on " in alone.stderr
    assert "in front of a simulator can take this simulated batch" in alone.stderr
    status = run_cli(env, "status", alone.stdout.strip())
    assert "in front of a simulator can take this simulated batch" in status.stdout
    workers = Workers(env, tmp_path, 1)
    try:
        # Once its heartbeat is in Redis, `workers` lists it and a new batch finds a taker.
        deadline = time.monotonic() + 60
        while run_cli(env, "workers", "--json").stdout.strip() in ("", "[]"):
            assert time.monotonic() < deadline, "the worker never sent a heartbeat:\n" + workers.output()
        other = write_jsonl(tmp_path / "other.jsonl", [chat_line("b", "y")])
        taken = run_cli(env, "submit", str(other), "--models", "sim/echo", "--wait")
        assert taken.returncode == 0, taken.stderr
        assert "no worker on " not in taken.stderr
    finally:
        workers.kill()
