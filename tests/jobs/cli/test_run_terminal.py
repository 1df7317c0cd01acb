"""`orbatch run` as a person drives it from a terminal: Ctrl-C reaches the whole foreground process group.

Each test starts the run as a terminal starts a job, in a process group of its own, and interrupts it as a
terminal does, by signalling that group (or by typing Ctrl-C into a pseudo-terminal). The embedded Postgres and
Redis are started by the run, so the signal reaches them too unless they live apart.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import psutil
import pytest

from jobs.services.embedded import postgres_folder
from tests.support import ROOT, Lines, chat_line, fresh_machine_env, run_cli, start_command, write_jsonl

pytestmark = pytest.mark.slow

TOTAL = 48
CONCURRENCY = 8


@pytest.fixture(autouse=True)
def _close_pipes() -> Iterator[None]:
    started: list[subprocess.Popen[str]] = []
    _STARTED.append(started)
    yield
    _STARTED.remove(started)
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


_STARTED: list[list[subprocess.Popen[str]]] = []


def _start(env: dict[str, str], *args: str) -> tuple[subprocess.Popen[str], Lines]:
    """`orbatch run ARGS` as a terminal's job: a process group of its own, its progress read line by line."""
    process, lines = start_command(env, "run", *args)
    _STARTED[-1].append(process)
    return process, lines


def _ctrl_c(process: subprocess.Popen[str]) -> None:
    """What a terminal's Ctrl-C does: SIGINT to every process of the foreground group."""
    os.killpg(process.pid, signal.SIGINT)


def _some_done(line: str) -> bool:
    return line.startswith("batch=") and " done=0 " not in line


def _status(env: dict[str, str]) -> dict[str, object]:
    done = run_cli(env, "status", "--json")
    assert done.returncode == 0, done.stderr
    [batch] = orjson.loads(done.stdout)
    return dict(batch)


def _lines(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def _services_left(data_dir: Path) -> list[str]:
    """Processes of the data dir's embedded services still running (the Redis is named by its pid file)."""
    found = []
    server = data_dir.resolve() / "redis" / "server.json"
    redis_pid = int(json.loads(server.read_text())["pid"]) if server.exists() else None
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(data_dir) in cmdline or proc.pid == redis_pid:
            found.append(cmdline)
    return found


def _requests(tmp_path: Path, count: int = TOTAL) -> Path:
    return write_jsonl(tmp_path / "in.jsonl", [chat_line(f"r{i}", f"row {i}") for i in range(count)])


def test_ctrl_c_to_the_group_finishes_the_calls_in_flight_and_the_same_command_pays_for_none_again(
    tmp_path: Path, data_dir: Path
) -> None:
    env = fresh_machine_env(data_dir, ORBATCH_SIMULATOR_ARGS="--latency-ms 1500 --no-free-tier --speed 60")
    out = tmp_path / "out.jsonl"
    args = (str(_requests(tmp_path)), "-o", str(out), "--models", "sim/echo", "--simulator")
    process, lines = _start(env, *args, "--concurrency", str(CONCURRENCY))
    lines.wait_for(_some_done)
    # The run's Redis and Postgres live in sessions of their own: the terminal's signal cannot reach them.
    redis_pid = int(json.loads((data_dir.resolve() / "redis" / "server.json").read_text())["pid"])
    assert os.getsid(redis_pid) != os.getsid(process.pid)
    # SIGUSR2, which the README suggests for a run that seems stuck, says where each task waits; the run goes on.
    os.kill(process.pid, signal.SIGUSR2)
    lines.wait_for(lambda line: "task stack" in line)
    _ctrl_c(process)
    stopping = lines.wait_for(lambda line: line.startswith("stopping:"))
    in_flight = int(re.findall(r"\d+", stopping)[0])
    assert 0 < in_flight <= CONCURRENCY
    assert process.wait(60) == 130
    rest = lines.rest()
    assert "interrupted:" in rest
    assert "Error" not in rest
    assert "Task exception was never retrieved" not in rest
    # Every call that was in flight was answered and stored, and written out with what finished before.
    batch = _status(env)
    counts = batch["request_counts"]
    assert isinstance(counts, dict)
    assert len(_lines(out)) == counts["completed"] == batch["attempts"]
    assert batch["status"] == "paused"
    assert batch["pause"] == {
        "reason": "interrupted",
        "message": "its `orbatch run` was stopped: the same command carries on with it, or `orbatch resume` "
        "hands it to any worker",
        "resume_at": None,
    }
    assert _services_left(data_dir) == []
    # The same command carries on: the rest is called once each, nothing already answered is called again.
    again = run_cli({**env, "ORBATCH_SIMULATOR_ARGS": "--no-free-tier --speed 60"}, "run", *args)
    assert again.returncode == 0, again.stderr
    assert sorted(line["custom_id"] for line in _lines(out)) == sorted(f"r{i}" for i in range(TOTAL))
    after = _status(env)
    assert after["attempts"] == TOTAL
    assert _services_left(data_dir) == []


def test_a_second_ctrl_c_stops_at_once_and_gives_the_calls_back(tmp_path: Path, data_dir: Path) -> None:
    # Calls that take a minute: only a second Ctrl-C ends the run before they do.
    env = fresh_machine_env(data_dir, ORBATCH_SIMULATOR_ARGS="--latency-ms 60000 --no-free-tier --speed 60")
    out = tmp_path / "out.jsonl"
    args = (str(_requests(tmp_path)), "-o", str(out), "--models", "sim/echo", "--simulator")
    process, lines = _start(env, *args, "--concurrency", str(CONCURRENCY))
    lines.wait_for(lambda line: f" running={CONCURRENCY} " in line)
    _ctrl_c(process)
    lines.wait_for(lambda line: line.startswith("stopping:"))
    started = time.monotonic()
    _ctrl_c(process)
    assert process.wait(60) == 130
    stopped_in = time.monotonic() - started
    assert "interrupted:" in lines.rest()
    batch = _status(env)
    counts = batch["request_counts"]
    assert isinstance(counts, dict)
    # The calls given up are recorded as such, and their requests wait to run again.
    assert counts["completed"] == 0
    assert counts["running"] == 0
    assert counts["pending"] == TOTAL
    usage = orjson.loads(run_cli(env, "usage", "--json").stdout)
    assert usage["total"]["calls"] == CONCURRENCY
    assert _services_left(data_dir) == []
    again = run_cli({**env, "ORBATCH_SIMULATOR_ARGS": "--no-free-tier --speed 60"}, "run", *args)
    assert again.returncode == 0, again.stderr
    assert len(_lines(out)) == TOTAL
    # Well within the minute the calls would have taken (a loaded machine's slow start included).
    assert stopped_in < 45, f"the second Ctrl-C took {stopped_in:.1f} s"


def _take_terminal() -> None:
    """preexec_fn: the pseudo-terminal on stdin becomes the new session's controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def test_ctrl_c_typed_in_a_terminal_stops_a_run_gracefully(tmp_path: Path, data_dir: Path) -> None:
    env = fresh_machine_env(
        data_dir,
        ORBATCH_SIMULATOR_ARGS="--latency-ms 1000 --no-free-tier --speed 60",
        TERM="xterm-256color",
        COLUMNS="160",
        LINES="40",
    )
    out = tmp_path / "out.jsonl"
    args = ["run", str(_requests(tmp_path)), "-o", str(out), "--models", "sim/echo", "--simulator"]
    master, slave = pty.openpty()
    process = subprocess.Popen(  # noqa: S603 - argv built here
        [sys.executable, "-m", "jobs", *args, "--concurrency", str(CONCURRENCY)],
        env=env,
        cwd=ROOT,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=_take_terminal,  # noqa: PLW1509 (only an ioctl)
    )
    os.close(slave)
    screen = b""

    def read_until(pattern: bytes, seconds: float) -> None:
        nonlocal screen
        deadline = time.monotonic() + seconds
        while not re.search(pattern, screen):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no {pattern!r} on the terminal:\n{screen[-3000:].decode(errors='replace')}"
                )
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    screen += os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break

    try:
        # The live progress bar, once some requests are done: `12/48`.
        read_until(rb"\b[1-9]\d*/48\b", 120)
        os.write(master, b"\x03")  # Ctrl-C, as typed: the terminal signals its foreground process group
        read_until(rb"interrupted:", 60)
        assert process.wait(60) == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    text = screen.decode(errors="replace")
    assert "stopping:" in text
    assert "Traceback" not in text
    batch = _status(env)
    counts = batch["request_counts"]
    assert isinstance(counts, dict)
    assert len(_lines(out)) == counts["completed"] == batch["attempts"]
    assert _services_left(data_dir) == []


def test_a_run_whose_embedded_redis_dies_says_so_at_once_and_keeps_what_finished(
    tmp_path: Path, data_dir: Path
) -> None:
    env = fresh_machine_env(data_dir, ORBATCH_SIMULATOR_ARGS="--latency-ms 1000 --no-free-tier --speed 60")
    out = tmp_path / "out.jsonl"
    args = (str(_requests(tmp_path)), "-o", str(out), "--models", "sim/echo", "--simulator")
    process, lines = _start(env, *args, "--concurrency", str(CONCURRENCY))
    lines.wait_for(_some_done)
    redis_pid = int(json.loads((data_dir.resolve() / "redis" / "server.json").read_text())["pid"])
    os.kill(redis_pid, signal.SIGKILL)
    assert process.wait(60) == 1
    rest = lines.rest()
    assert "error: the embedded Redis stopped; see " in rest
    assert "the results of what finished are written" in rest
    batch = _status(env)
    counts = batch["request_counts"]
    assert isinstance(counts, dict)
    # The calls in flight when Redis went were answered and stored: none is made again.
    assert len(_lines(out)) == counts["completed"] == batch["attempts"]
    again = run_cli(env, "run", *args)
    assert again.returncode == 0, again.stderr
    assert _status(env)["attempts"] == TOTAL
    assert _services_left(data_dir) == []


@pytest.mark.parametrize(
    ("stage", "simulator", "models", "ready"),
    [
        # Free requests waiting for their slots: two a minute.
        ("pacing", "--free-per-minute 2 --no-free-tier", "sim/echo:free", "done=1 "),
        # The simulator's day allows three: the batch is paused on its quota.
        ("paused", "--free-per-day 3 --no-free-tier --speed 60", "sim/echo:free", "status=paused"),
    ],
)
def test_ctrl_c_ends_a_run_whatever_it_is_waiting_for(
    tmp_path: Path, data_dir: Path, stage: str, simulator: str, models: str, ready: str
) -> None:
    env = fresh_machine_env(data_dir, ORBATCH_SIMULATOR_ARGS=simulator)
    out = tmp_path / "out.jsonl"
    process, lines = _start(
        env, str(_requests(tmp_path, 10)), "-o", str(out), "--models", models, "--simulator"
    )
    lines.wait_for(lambda line: ready in line)
    _ctrl_c(process)
    assert process.wait(30) == 130, stage
    assert "interrupted:" in lines.rest()
    assert len(_lines(out)) == _status(env)["request_counts"]["completed"]  # type: ignore[index]
    assert _services_left(data_dir) == []


def test_ctrl_c_while_a_big_file_goes_in_stores_nothing(tmp_path: Path, data_dir: Path) -> None:
    env = fresh_machine_env(data_dir)
    path = write_jsonl(tmp_path / "big.jsonl", (chat_line(f"r{i}", "x" * 200) for i in range(300_000)))
    process, lines = _start(
        env, str(path), "-o", str(tmp_path / "out.jsonl"), "--models", "sim/echo", "--simulator"
    )
    lines.wait_for(lambda line: line.startswith("submitting "))
    _ctrl_c(process)
    assert process.wait(60) == 130
    rest = lines.rest()
    assert "interrupted" in rest
    listed = run_cli(env, "status", "--json")
    assert listed.returncode == 0, listed.stderr
    assert orjson.loads(listed.stdout) == []
    assert _services_left(data_dir) == []


def test_a_run_whose_embedded_postgres_dies_stops_at_once_and_the_same_command_carries_on(
    tmp_path: Path, data_dir: Path
) -> None:
    env = fresh_machine_env(data_dir, ORBATCH_SIMULATOR_ARGS="--latency-ms 1000 --no-free-tier --speed 60")
    out = tmp_path / "out.jsonl"
    args = (str(_requests(tmp_path)), "-o", str(out), "--models", "sim/echo", "--simulator")
    process, lines = _start(env, *args, "--concurrency", str(CONCURRENCY))
    lines.wait_for(_some_done)
    postmaster = int((postgres_folder(data_dir) / "postmaster.pid").read_text().split()[0])
    os.kill(postmaster, signal.SIGKILL)
    started = time.monotonic()
    assert process.wait(60) == 1
    stopped_in = time.monotonic() - started
    rest = lines.rest()
    assert "error: the embedded Postgres stopped; see " in rest
    # Nothing can be stored without it: the run says so at once rather than letting calls finish for nothing.
    assert stopped_in < 30, f"took {stopped_in:.1f} s"
    # The same command starts the Postgres again (it recovers from its log) and carries on.
    again = run_cli(env, "run", *args)
    assert again.returncode == 0, again.stderr
    assert sorted(line["custom_id"] for line in _lines(out)) == sorted(f"r{i}" for i in range(TOTAL))
    # Calls lost with the database are made again: at most those that were in flight.
    assert TOTAL <= _status(env)["attempts"] <= TOTAL + CONCURRENCY  # type: ignore[operator]
    assert _services_left(data_dir) == []
