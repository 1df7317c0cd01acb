"""The account a worker throttles by is read again while it runs: a simulator that starts late, or anew."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.core.constants import THROTTLE_KEY
from jobs.core.settings import Settings
from jobs.scheduling.fleet import limits_key, throttle_namespace
from tests.support import ROOT, Workers, chat_line, run_cli, write_jsonl
from worker.account import AccountLimits
from worker.upstream import adopt


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_worker_started_before_its_simulator_adopts_it_once_it_answers(
    env: dict[str, str], tmp_path: Path
) -> None:
    port = _free_port()
    late = {**env, "OPENROUTER_BASE_URL": f"http://127.0.0.1:{port}/api/v1"}
    workers = Workers(late, tmp_path, 1)
    # The worker finds nothing at its start (a compose stack whose simulator is not up yet)...
    deadline = time.monotonic() + 60
    while "could not read GET /key" not in workers.output():
        assert time.monotonic() < deadline, workers.output()
        await asyncio.sleep(0.1)
    log = tmp_path / "late-simulator.log"
    with log.open("wb") as sink:
        simulator = subprocess.Popen(  # noqa: ASYNC220, S603 - started and left running; argv built here
            [sys.executable, "-m", "jobs.simulator", "--port", str(port)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    try:
        # ...and once the simulator answers, it takes the simulated batch made against it.
        path = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"r{i}", "x") for i in range(3)])
        done = run_cli(late, "submit", str(path), "--models", "sim/echo", "--wait", timeout=120)
        assert done.returncode == 0, done.stderr + workers.output()
        assert "upstream changed: limits read again" in workers.output()
        assert '"simulated":true' in workers.output()
    finally:
        workers.kill()
        simulator.terminate()
        simulator.wait(10)


def _account(instance: str, counting_since: float = 0.0) -> AccountLimits:
    return AccountLimits(
        free_per_window=20,
        window_seconds=1.0,
        free_per_day=1000,
        day_seconds=1440.0,
        simulated=True,
        instance=instance,
        counting_since=counting_since,
    )


async def test_a_simulator_new_to_the_fleet_is_an_account_whose_quota_is_whole(
    redis: ArqRedis, engine: AsyncEngine, queue_name: str
) -> None:
    settings = Settings(queue_name=queue_name)
    ctx = SimpleNamespace(
        settings=settings, engine=engine, throttle=None, simulated=False, account=None, follow=None, queue=""
    )
    namespace = throttle_namespace(queue_name, True)
    day = THROTTLE_KEY.format(queue=namespace, name="free-day")
    await adopt(ctx, redis, _account("first"))  # type: ignore[arg-type]
    assert ctx.simulated is True
    await redis.set(day, "1000:999")
    # Another worker in front of the same simulator keeps the fleet's count.
    await adopt(ctx, redis, _account("first"))  # type: ignore[arg-type]
    assert await redis.get(day) == b"1000:999"
    # A new simulator (a restart, another run's) counts from nothing, as its own counters do.
    await adopt(ctx, redis, _account("second"))  # type: ignore[arg-type]
    assert await redis.get(day) is None
    assert await redis.hget(limits_key(namespace), "instance") == b"second"
