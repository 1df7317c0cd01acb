"""Owners share a fleet alike through the API, however many batches each makes, and say their priority.

Each test starts from an empty Redis (the `redis` fixture): the tables are emptied between tests and request ids
start again at 1, so a job left queued by an earlier test would stand for a new request."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from arq.connections import ArqRedis
from openai import OpenAI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.api.keys import NewKey
from jobs.scheduling.roster import Heartbeat, write_heartbeat
from tests.conftest import Services
from tests.jobs.api.conftest import ApiServer, api_env, batch_lines, jsonl
from tests.support import Simulator, Workers

pytestmark = pytest.mark.slow


def _batch(client: OpenAI, count: int, prefix: str, **extra: object) -> str:
    uploaded = client.files.create(file=("in.jsonl", jsonl(batch_lines(count, prefix))), purpose="batch")
    return client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_body={"models": ["sim/echo"], **extra},
    ).id


async def _completed(engine: AsyncEngine, batch_ids: list[str]) -> int:
    async with engine.connect() as conn:
        statement = text("SELECT count(*) FROM request WHERE batch_id = ANY(:ids) AND status = 'completed'")
        return int((await conn.execute(statement, {"ids": batch_ids})).scalar_one())


async def test_an_owner_with_three_batches_gets_no_more_of_the_fleet_than_an_owner_with_one(
    services: Services,
    database_url: str,
    queue_name: str,
    session_simulator: Simulator,
    owners: dict[str, NewKey],
    engine: AsyncEngine,
    redis: ArqRedis,
    tmp_path: Path,
) -> None:
    await session_simulator.reset(latency_ms=50)
    env = api_env(services, database_url, session_simulator, queue_name)
    server = ApiServer(env, tmp_path / "serve.log", "--no-worker")
    try:
        alice, bob = server.client(owners["alice"].key), server.client(owners["bob"].key)
        alices = [_batch(alice, 60, f"a{i}-") for i in range(3)]
        bobs = _batch(bob, 60, "b-", priority="normal")
        assert bob.batches.retrieve(bobs).model_extra["orbatch"]["priority"] == "normal"  # type: ignore[index]
        workers = Workers(env, tmp_path, 1, "--concurrency", "2")
        try:
            deadline = time.monotonic() + 120
            while await _completed(engine, [bobs]) < 60:
                assert time.monotonic() < deadline, workers.output()[-3000:]
                await asyncio.sleep(0.05)
            # An equal part each: about 60 of alice's when bob's 60 are done, not the 180 a share per batch gives.
            assert await _completed(engine, alices) <= 90
        finally:
            workers.kill()
    finally:
        server.stop()


async def test_a_batchs_priority_is_given_at_creation_and_refused_when_it_is_no_priority(
    services: Services,
    database_url: str,
    queue_name: str,
    session_simulator: Simulator,
    owners: dict[str, NewKey],
    redis: ArqRedis,
    tmp_path: Path,
) -> None:
    server = ApiServer(
        api_env(services, database_url, session_simulator, queue_name), tmp_path / "serve.log", "--no-worker"
    )
    try:
        alice = server.client(owners["alice"].key)
        nightly = _batch(alice, 2, "n-", priority="background")
        assert alice.batches.retrieve(nightly).model_extra["orbatch"]["priority"] == "background"  # type: ignore[index]
        labels = _batch(alice, 2, "l-")
        # A live worker's heartbeat for these simulated batches (one that works none of them yet), so the pages
        # speak of their turn rather than of a missing worker.
        now = datetime.now(UTC)
        idle = Heartbeat(
            "h:1:x", "h", 1, "0", f"{queue_name}:sim", 4, 0, 0, 0, now, None, now, simulated=True
        )
        await write_heartbeat(redis, queue_name, idle, 60)
        bearer = {"accept": "text/html", "authorization": f"Bearer {owners['alice'].key}"}
        async with httpx.AsyncClient(base_url=server.url, headers=bearer) as http:
            # The fleet page lists the viewer's running batches with their priority, slots and turn.
            fleet = (await http.get("/fleet")).text
            assert 'id="running-batches"' in fleet
            assert nightly in fleet
            assert labels in fleet
            # The server is in front of the suite's simulator: its batches are simulated ones.
            assert "1 background simulated · 1 normal simulated" in fleet
            # The batch page says whose turn it is and offers the priority.
            page = (await http.get(f"/batches/{nightly}")).text
            assert 'id="priority-tag">background<' in page
            assert "priority background: 1 running batch of a higher priority go first" in page
            assert '<option value="urgent">' in page
        with pytest.raises(Exception, match="priority") as refused:
            _batch(alice, 2, "x-", priority="whenever")
        assert getattr(refused.value, "status_code", None) == 400
    finally:
        server.stop()
