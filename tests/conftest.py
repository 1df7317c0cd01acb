"""Session fixtures: a throwaway database on the real Postgres, a Redis database, the simulator."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from arq.connections import ArqRedis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.db import create_engine, drop_database, ensure_database, upgrade
from jobs.queue import connect
from tests.support import Simulator, test_env

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
REDIS_BASE_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/14")


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for logs and files of the whole run."""
    return tmp_path_factory.mktemp("run")


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A new database, migrated to head, dropped at the end."""
    url = f"{POSTGRES_URL}/orbatch_test_{uuid.uuid4().hex[:10]}"
    asyncio.run(ensure_database(url))
    asyncio.run(upgrade(url))
    yield url
    asyncio.run(drop_database(url))


@pytest.fixture(scope="session")
def queue_name() -> str:
    return f"orbatch-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def session_simulator(artifacts: Path) -> Iterator[Simulator]:
    sim = Simulator(artifacts / "simulator.log")
    yield sim
    sim.stop()


@pytest.fixture(scope="session")
async def session_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url, pool_size=4)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
async def session_redis(queue_name: str) -> AsyncIterator[ArqRedis]:
    pool = await connect(REDIS_BASE_URL, queue_name)
    yield pool
    await pool.flushdb()
    await pool.aclose()


# Each test that touches a service gets it clean: empty tables, an empty Redis database, a simulator
# back at its defaults with no calls recorded.


@pytest.fixture
async def engine(session_engine: AsyncEngine) -> AsyncEngine:
    async with session_engine.begin() as conn:
        await conn.execute(
            text("TRUNCATE batch, request, attempt, result, model_price RESTART IDENTITY CASCADE")
        )
    return session_engine


@pytest.fixture
async def redis(session_redis: ArqRedis) -> ArqRedis:
    await session_redis.flushdb()
    return session_redis


@pytest.fixture
async def simulator(session_simulator: Simulator) -> Simulator:
    await session_simulator.reset()
    return session_simulator


@pytest.fixture
def env(
    database_url: str, engine: AsyncEngine, redis: ArqRedis, simulator: Simulator, queue_name: str
) -> dict[str, str]:
    """Environment for CLI and worker subprocesses, as a user would export it, with every service clean."""
    return test_env(database_url, REDIS_BASE_URL, simulator.base_url, queue_name)
