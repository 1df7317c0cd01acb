"""`serve`, `run` and the CLI side by side on one data dir, as a person uses them: one set of embedded services,
each command finding what the others started, and each batch worked by what it was meant for."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.support import Lines, chat_line, fresh_machine_env, run_cli, start_command, write_jsonl

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def _serving(env: dict[str, str]) -> Iterator[tuple[str, Lines]]:
    """`orbatch serve --no-auth --simulator` on the embedded services of a fresh machine; its simulator's URL."""
    process, lines = start_command(env, "serve", "--no-auth", "--simulator", "--port", "0")
    try:
        banner = lines.wait_for(lambda line: "It answers at " in line)
        simulator = re.search(r"It answers at (http://\S+/api/v1)", banner)
        assert simulator is not None
        lines.wait_for(lambda line: line.startswith("dashboard: "))
        yield simulator.group(1), lines
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stderr.close()


def test_every_command_finds_the_services_of_a_running_serve_and_its_worker_takes_what_is_meant_for_it(
    tmp_path: Path, data_dir: Path
) -> None:
    env = fresh_machine_env(data_dir, ORBATCH_SIMULATOR_ARGS="--speed 60 --no-free-tier")
    # First a run, stopped with Ctrl-C: what is left of its batch waits for it.
    interrupted = write_jsonl(tmp_path / "run.jsonl", [chat_line(f"r{i}", f"run {i}") for i in range(40)])
    run, run_lines = start_command(
        {**env, "ORBATCH_SIMULATOR_ARGS": "--latency-ms 500 --no-free-tier --speed 60"},
        "run",
        str(interrupted),
        "-o",
        str(tmp_path / "run.out"),
        *_STOPPED,
    )
    try:
        run_lines.wait_for(lambda line: line.startswith("batch=") and " done=0 " not in line)
        os.killpg(run.pid, signal.SIGINT)
        assert run.wait(60) == 130
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        run.stderr.close()
    stopped = {b["name"]: b for b in orjson.loads(run_cli(env, "status", "--json").stdout)}["stopped"]
    assert stopped["pause"]["reason"] == "interrupted"
    assert 0 < stopped["request_counts"]["completed"] < 40
    with _serving(env) as (simulator_url, lines):
        assert "an in-process worker runs the simulated batches of this database" in "".join(lines.seen)
        # `workers` reaches the embedded Redis the server keeps, as `status` reaches its Postgres.
        listed = run_cli(env, "workers", "--json")
        assert listed.returncode == 0, listed.stderr
        [beat] = orjson.loads(listed.stdout)
        assert beat["simulated"] is True
        # A CLI submit to the server's simulator, with no key at all, is a simulated batch the server works.
        submitted = write_jsonl(tmp_path / "cli.jsonl", [chat_line(f"c{i}", f"cli {i}") for i in range(5)])
        no_key = {**env, "OPENROUTER_BASE_URL": simulator_url}
        done = run_cli(
            no_key, "submit", str(submitted), "--models", "sim/echo", "--name", "from-cli", "--wait"
        )
        assert done.returncode == 0, done.stderr
        assert "no worker" not in done.stderr
        batches = {b["name"]: b for b in orjson.loads(run_cli(env, "status", "--json").stdout)}
    assert batches["from-cli"]["simulated"] is True
    assert batches["from-cli"]["request_counts"]["completed"] == 5
    # Meanwhile the stopped run's batch was left as it was, for its run.
    assert batches["stopped"]["request_counts"] == stopped["request_counts"]
    assert batches["stopped"]["attempts"] == stopped["attempts"]


_STOPPED = ("--models", "sim/echo", "--simulator", "--concurrency", "2", "--name", "stopped")
