"""API fixtures: `orbatch serve` as a subprocess on the test services, keys for two owners, SDK clients."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
from openai import OpenAI
from openai.types import Batch
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.api.keys import NewKey, create_key
from tests.conftest import Services
from tests.support import ROOT, Simulator, die_with_parent, test_env

TERMINAL = ("completed", "failed", "expired", "cancelled")


class ApiServer:
    """`orbatch serve --port 0 ARGS` in a subprocess, its log in a file."""

    def __init__(self, env: Mapping[str, str], log_path: Path, *args: str) -> None:
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(  # noqa: S603 - argv built here, no shell
                [sys.executable, "-m", "jobs", "serve", "--port", "0", *args],
                env=dict(env),
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=log,
                preexec_fn=die_with_parent,  # noqa: PLW1509 (only prctl, no locks taken)
            )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()
        if "listening on" not in line:
            self.process.wait(10)
            raise RuntimeError(f"orbatch serve did not start: {line!r}\n{self.log()}")
        self.url = line.rsplit(" ", 1)[1].strip()
        self.base_url = f"{self.url}/v1"

    def client(self, key: str, **options: Any) -> OpenAI:
        """The official sync client on this server, retrying nothing (tests look at each answer)."""
        return OpenAI(base_url=self.base_url, api_key=key, **{"max_retries": 0, **options})

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, as a service manager stops it; its exit status."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode


def api_env(
    services: Services, database_url: str, simulator: Simulator, queue_name: str, **extra: str
) -> dict[str, str]:
    """What an operator would export for `orbatch serve` on this test process's services (its own Redis
    database, or its embedded Redis)."""
    return test_env(database_url, services.redis, simulator.base_url, queue_name, **extra)


@pytest.fixture(scope="module")
def api_server(
    services: Services,
    database_url: str,
    queue_name: str,
    session_simulator: Simulator,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ApiServer]:
    """One server (with its in-process worker) for a module's tests."""
    server = ApiServer(
        api_env(services, database_url, session_simulator, queue_name),
        tmp_path_factory.mktemp("api") / "serve.log",
    )
    yield server
    assert server.stop() == 0, server.log()[-3000:]


@pytest.fixture
async def owners(engine: AsyncEngine) -> AsyncIterator[dict[str, NewKey]]:
    """Keys for two owners, alice and bob, in a database with no other key."""
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE api_key, api_file, api_file_chunk"))
    return {name: await create_key(engine, name) for name in ("alice", "bob")}


def batch_lines(count: int, prefix: str = "q", **body: Any) -> list[bytes]:
    """Batch API lines whose prompts name their custom_id, so an answer shows whose it is."""
    return [
        orjson.dumps(
            {
                "custom_id": f"{prefix}{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"messages": [{"role": "user", "content": f"prompt of {prefix}{i}"}], **body},
            }
        )
        for i in range(count)
    ]


def jsonl(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def wait_for(client: OpenAI, batch_id: str, seconds: float = 60, until: tuple[str, ...] = TERMINAL) -> Batch:
    """Poll as a user's script does until the batch reaches one of `until`."""
    deadline = time.monotonic() + seconds
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in until:
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"{batch_id} still {batch.status} after {seconds}s: {batch}")
        time.sleep(0.2)
