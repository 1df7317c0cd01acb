"""What the benchmarks share: a scratch database and Redis, the simulator process, the machine's description."""

from __future__ import annotations

import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")


def machine() -> str:
    """One line naming the machine the figures come from."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}: {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def burst_worker(env: dict[str, str], timeout: float, concurrency: int = 16) -> float:
    """Run one `orbatch worker --burst` on `env`'s services until nothing is left; its wall-clock seconds (exits
    the bench with the worker's output if it fails)."""
    started = time.perf_counter()
    worker = subprocess.run(  # noqa: S603 - argv built here, no shell
        [sys.executable, "-m", "jobs", "worker", "--burst", "--concurrency", str(concurrency)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        check=False,
        timeout=timeout,
    )
    if worker.returncode != 0:
        raise SystemExit(f"worker failed: {worker.stderr.decode()[-2000:]}")
    return time.perf_counter() - started


@contextmanager
def scratch_database() -> Iterator[str]:
    """A fresh database migrated to head, dropped afterwards; Redis database 13 flushed before and after."""
    from jobs.core.db import drop_database, ensure_database, upgrade

    url = f"{POSTGRES_URL}/orbatch_bench_{uuid.uuid4().hex[:8]}"
    asyncio.run(ensure_database(url))
    asyncio.run(upgrade(url))
    flush = redis.Redis.from_url(REDIS_URL)
    flush.flushdb()
    try:
        yield url
    finally:
        flush.flushdb()
        flush.close()
        asyncio.run(drop_database(url))


def fake_results(url: str, batch_id: str) -> None:
    """Give every request of the batch an attempt and a result, in SQL, as a finished run would."""
    sql = f"""
    INSERT INTO attempt (request_id, batch_id, number, models_sent, outcome, model, generation_id, http_status)
    SELECT id, batch_id, 1, '{{sim/echo}}', 'success', 'sim/echo', 'gen-' || id, 200 FROM request WHERE batch_id = '{batch_id}';
    INSERT INTO result (request_id, attempt_id, body, content, finish_reason, model)
    SELECT a.request_id, a.id,
           jsonb_build_object('id', a.generation_id, 'model', 'sim/echo', 'object', 'chat.completion',
               'choices', jsonb_build_array(jsonb_build_object('index', 0, 'finish_reason', 'stop',
                   'message', jsonb_build_object('role', 'assistant', 'content', 'positive'))),
               'usage', jsonb_build_object('prompt_tokens', 30, 'completion_tokens', 1, 'cost', 0.000031)),
           'positive', 'stop', 'sim/echo'
    FROM attempt a WHERE a.batch_id = '{batch_id}';
    UPDATE request SET status = 'completed' WHERE batch_id = '{batch_id}';
    """  # noqa: S608 - built from this module's constants; values are bound parameters
    subprocess.run(["psql", "-q", url, "-c", sql], check=True, capture_output=True)  # noqa: S603 - argv built here, no shell


class Simulator:
    """The OpenRouter simulator as a subprocess."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(  # noqa: S603 - argv built here, no shell
            [sys.executable, "-u", "-m", "jobs.simulator", "--port", "0", "--no-record", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
        )
        assert self.process.stdout is not None
        self.base_url = self.process.stdout.readline().decode().rsplit(" ", 1)[1].strip()
        self.root = self.base_url.removesuffix("/api/v1")

    def configure(self, **settings: object) -> None:
        httpx.post(f"{self.root}/_sim/config", json=settings).raise_for_status()

    def stats(self) -> dict[str, int]:
        return dict(httpx.get(f"{self.root}/_sim/stats").json())

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def env_for(database_url: str, base_url: str, **extra: str) -> dict[str, str]:
    """The environment of an orbatch process in a benchmark."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORBATCH_", "OPENROUTER_"))}
    env.update(
        DATABASE_URL=database_url,
        REDIS_URL=REDIS_URL,
        OPENROUTER_BASE_URL=base_url,
        OPENROUTER_API_KEY="sk-or-v1-bench",
        ORBATCH_QUEUE_NAME="orbatch-bench",
        ORBATCH_LOG_LEVEL="WARNING",
    )
    env.update(extra)
    return env


def baseline_tree(baseline: str) -> Path:
    """A checkout of a baseline commit (in the temporary folder, kept between runs) with its own environment."""
    tree = Path(tempfile.gettempdir()) / f"orbatch-{baseline}"
    if not tree.exists():
        subprocess.run(  # noqa: S603 - argv built here
            ["git", "worktree", "add", "--detach", str(tree), baseline],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
    subprocess.run(["uv", "sync", "--frozen", "--quiet"], cwd=tree, check=True)
    return tree


class Code:
    """One version of orbatch: its folder and its interpreter."""

    def __init__(self, name: str, tree: Path) -> None:
        self.name = name
        self.tree = tree
        self.python = str(tree / ".venv" / "bin" / "python")

    def cli(self, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 - argv built here
            [self.python, "-m", "jobs", *args],
            env=env,
            cwd=self.tree,
            capture_output=True,
            text=True,
            check=False,
        )

    def worker(self, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(  # noqa: S603 - argv built here
            [self.python, "-m", "jobs", "worker", *args],
            env=env,
            cwd=self.tree,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


def start_workers(
    env: dict[str, str], count: int, concurrency: int, logs: Path, name: str
) -> list[subprocess.Popen[bytes]]:
    """`count` `orbatch worker` processes on `env`'s services, each logging to `logs/NAME-worker-I.log`."""
    return [
        subprocess.Popen(  # noqa: S603 - argv built here, no shell
            [sys.executable, "-m", "jobs", "worker", "--concurrency", str(concurrency)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=(logs / f"{name}-worker-{i}.log").open("wb"),
        )
        for i in range(count)
    ]


@contextmanager
def code_database(code: Code, base_url: str, **extra: str) -> Iterator[tuple[str, dict[str, str]]]:
    """A fresh database migrated by `code` itself (a baseline runs on its own schema), with the environment of
    an orbatch process on it; Redis database 13 flushed before and after, the database dropped after."""
    from jobs.core.db import drop_database

    url = f"{POSTGRES_URL}/orbatch_bench_{uuid.uuid4().hex[:8]}"
    env = env_for(url, base_url, **extra)
    flush = redis.Redis.from_url(REDIS_URL)
    flush.flushdb()
    done = code.cli(env, "db", "upgrade")
    if done.returncode != 0:
        raise RuntimeError(f"{code.name}: db upgrade failed: {done.stderr}")
    try:
        yield url, env
    finally:
        flush.flushdb()
        flush.close()
        asyncio.run(drop_database(url))
