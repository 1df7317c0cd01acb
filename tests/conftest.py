"""Session fixtures: a throwaway database on a real Postgres, a Redis database, the simulator.

The services are the machine's (TEST_POSTGRES_URL, TEST_REDIS_URL) when they answer, else the embedded ones
`orbatch run` starts. Under pytest-xdist each worker process has its own database, Redis database and
simulator: worker gwN uses TEST_REDIS_URL's database number minus N.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis as sync_redis
from arq.connections import ArqRedis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.core.db import create_engine, drop_database, ensure_database, retry_conflicts, upgrade
from jobs.scheduling.queue import connect
from jobs.services.embedded import embedded_database, embedded_redis
from tests.support import Simulator, Workers, stop_leftovers, test_env

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
REDIS_BASE_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
# Long enough for a loaded machine's loopback, short enough that a closed port costs nothing noticeable.
_PROBE_SECONDS = 2.0


def database_on(server_url: str, name: str) -> str:
    """The URL of database `name` on the Postgres server of `server_url` (TCP or a Unix socket's `?host=`)."""
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _postgres_answers(server_url: str) -> bool:
    async def probe() -> None:
        connection = await asyncpg.connect(database_on(server_url, "postgres"), timeout=_PROBE_SECONDS)
        await connection.close()

    try:
        asyncio.run(probe())
    except (OSError, TimeoutError):
        return False
    return True


def _redis_answers(url: str) -> bool:
    client = sync_redis.Redis.from_url(
        url, socket_connect_timeout=_PROBE_SECONDS, socket_timeout=_PROBE_SECONDS
    )
    try:
        return bool(client.ping())
    except (sync_redis.ConnectionError, sync_redis.TimeoutError):
        return False
    finally:
        client.close()


def _xdist_worker() -> int | None:
    """This process's xdist worker number (gw3: 3), None when the tests run in one process."""
    name = os.environ.get("PYTEST_XDIST_WORKER")
    return int(name.removeprefix("gw")) if name else None


def _worker_redis_url(base_url: str) -> str:
    # The tests flush their Redis database and arq's keys are not namespaced by queue, so two workers
    # sharing a database would empty each other's queues.
    index = _xdist_worker() or 0
    parts = urlsplit(base_url)
    base = int(parts.path.strip("/") or 0)
    if base - index < 0:
        raise pytest.UsageError(
            f"TEST_REDIS_URL uses Redis database {base}, too low for xdist worker gw{index}: each worker "
            "uses that number minus its index; raise it or run fewer workers (-n)"
        )
    return urlunsplit(parts._replace(path=f"/{base - index}"))


@dataclass(frozen=True, slots=True)
class Services:
    """The Postgres server and the Redis database of this test process, and which of them are embedded."""

    postgres: str
    redis: str
    embedded: tuple[str, ...]

    def database(self, name: str) -> str:
        """The URL of database `name` on the Postgres server."""
        return database_on(self.postgres, name)


def pytest_report_header(config: pytest.Config) -> str:
    postgres = (
        POSTGRES_URL if _postgres_answers(POSTGRES_URL) else "embedded (TEST_POSTGRES_URL does not answer)"
    )
    redis = (
        f"{REDIS_BASE_URL} (each xdist worker gwN: that database minus N)"
        if _redis_answers(REDIS_BASE_URL)
        else "embedded, one per process (TEST_REDIS_URL does not answer)"
    )
    return f"services: postgres {postgres}; redis {redis}"


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """The machine's services when they answer, else the embedded ones, started once and stopped at the end."""
    embedded: list[str] = []
    with contextlib.ExitStack() as stack:
        postgres = POSTGRES_URL
        if not _postgres_answers(postgres):
            # One Postgres for every xdist worker of the run: they share the run's temporary folder.
            root = tmp_path_factory.getbasetemp()
            shared = root.parent if _xdist_worker() is not None else root
            postgres = stack.enter_context(embedded_database(shared / "embedded"))
            embedded.append("postgres")
        if _redis_answers(REDIS_BASE_URL):
            redis = _worker_redis_url(REDIS_BASE_URL)
        else:
            # A Redis of this worker's own: no other worker can flush it.
            redis = stack.enter_context(embedded_redis(tmp_path_factory.mktemp("embedded"))).url
            embedded.append("redis")
        yield Services(postgres, redis, tuple(embedded))


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder for logs and files of the whole run."""
    return tmp_path_factory.mktemp("run")


@pytest.fixture(scope="session")
def database_url(services: Services) -> Iterator[str]:
    """A new database, migrated to head, dropped at the end."""
    url = services.database(f"orbatch_test_{uuid.uuid4().hex[:10]}")
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
async def session_redis(services: Services, queue_name: str) -> AsyncIterator[ArqRedis]:
    pool = await connect(services.redis, queue_name)
    yield pool
    await pool.flushdb()
    await pool.aclose()


# Each test that touches a service gets it clean: empty tables, an empty Redis database, a simulator
# back at its defaults with no calls recorded.


@pytest.fixture
async def engine(session_engine: AsyncEngine) -> AsyncEngine:
    async def truncate() -> None:
        async with session_engine.begin() as conn:
            # The order a worker's lease locks them in (request, batch, model_price, attempt): a server's worker
            # still finishing the last test's batch then waits for the truncate rather than deadlocking with it.
            await conn.execute(
                text("TRUNCATE request, batch, model_price, attempt, result RESTART IDENTITY CASCADE")
            )

    await retry_conflicts(truncate)
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
    services: Services,
    database_url: str,
    engine: AsyncEngine,
    redis: ArqRedis,
    simulator: Simulator,
    queue_name: str,
) -> dict[str, str]:
    """Environment for CLI and worker subprocesses, as a user would export it, with every service clean."""
    return test_env(database_url, services.redis, simulator.base_url, queue_name)


@pytest.fixture(autouse=True)
def _no_worker_outlives_its_test() -> Iterator[None]:
    """Workers a test started and did not stop are killed when it ends."""
    yield
    while Workers.alive:
        Workers.alive.pop().kill()


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """An ORBATCH_DATA_DIR for embedded services, outside pytest's temporary root.

    Run as root, the embedded Postgres drops to a user of its own, which must reach its folder; pytest keeps its
    root (`/tmp/pytest-of-<user>`) closed to others and closes it again whenever a test process starts.
    """
    folder = Path(tempfile.mkdtemp(prefix="orbatch-data-"))
    folder.chmod(0o755)
    yield folder / "data"
    stop_leftovers(folder / "data")
    shutil.rmtree(folder, ignore_errors=True)
