"""The one way a command brings up the services it needs, and what commands share once they are up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import orjson
import typer
from arq.connections import ArqRedis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.cli.terminal import err, say
from jobs.core.db import create_engine, ensure_database, upgrade
from jobs.core.logs import configure_logging
from jobs.core.settings import Settings, get_settings
from jobs.operations.control import resolve_batch
from jobs.operations.results import ExportFormat
from jobs.scheduling.queue import connect
from jobs.services.embedded import LocalServices, local_services, running_redis
from worker.report import where

__all__ = [
    "BatchId",
    "Format",
    "Services",
    "connect_in_use",
    "logs_for_people",
    "print_json",
    "redis_in_use",
    "resolve",
    "services",
    "where_redis",
]

T = TypeVar("T")

Format = Annotated[
    ExportFormat,
    typer.Option(
        "--format",
        "-f",
        help="batch: OpenAI Batch output lines. records: each input record with its answer merged in "
        "(the fields of a JSON answer, else `answer`).",
    ),
]
BatchId = Annotated[
    str,
    typer.Argument(help="Batch id, or a batch's name (the latest batch of that name).", show_default=False),
]


@dataclass(slots=True, frozen=True)
class Services:
    """The services a command works on: its settings point at them; `local` says which were started here."""

    settings: Settings
    local: LocalServices

    @contextlib.asynccontextmanager
    async def engine(self, pool_size: int = 1) -> AsyncIterator[AsyncEngine]:
        """An engine on the database, disposed of when the block ends."""
        engine = create_engine(self.settings.database_url, pool_size=pool_size)
        try:
            yield engine
        finally:
            await engine.dispose()

    def run(self, work: Callable[[AsyncEngine], Awaitable[T]], pool_size: int = 1) -> T:
        """Run `work` on an engine (see `engine`) in a fresh event loop."""

        async def go() -> T:
            async with self.engine(pool_size) as engine:
                return await work(engine)

        return asyncio.run(go())


@contextlib.contextmanager
def services(given: Settings | None = None, *, redis: bool = False) -> Iterator[Services]:
    """DATABASE_URL when set, else the embedded Postgres in ORBATCH_DATA_DIR (another command's, else started
    for this block; created and migrated if it is new); with `redis`, REDIS_URL or the embedded Redis alike,
    and what was started is said. Without `redis`, REDIS_URL is left as it is (see `redis_in_use`)."""
    settings = given or get_settings()
    database_given, redis_given = settings.services_given()
    with local_services(
        settings.data_dir,
        settings.database_url if database_given else None,
        settings.redis_url if redis_given or not redis else None,
    ) as local:
        if redis and local.started:
            say(
                err,
                f"embedded {' and '.join(local.started)} (DATABASE_URL / REDIS_URL not set), "
                f"data in {settings.data_dir}",
            )
        if "postgres" in local.started:

            async def prepare() -> None:
                # A data dir that never saw a run has no database or schema yet.
                await ensure_database(local.database_url)
                await upgrade(local.database_url)

            asyncio.run(prepare())
        urls = {"database_url": local.database_url} | ({"redis_url": local.redis_url} if redis else {})
        yield Services(settings.model_copy(update=urls), local)


async def resolve(engine: AsyncEngine, ref: str) -> str:
    """The id of the batch a user named by id or name; a shared name is said on stderr."""
    async with engine.connect() as conn:
        batch_id, note = await resolve_batch(conn, ref)
    if note:
        say(err, note)
    return batch_id


def redis_in_use(settings: Settings) -> str | None:
    """REDIS_URL when set; without it, the data dir's embedded Redis while a `run`, `serve` or `worker` keeps
    it (the rule every command follows, as for the embedded Postgres); None when there is neither."""
    if settings.services_given()[1]:
        return settings.redis_url
    return running_redis(settings.data_dir)


def where_redis(url: str | None, settings: Settings) -> str:
    """The Redis in use, for a message."""
    if url is not None:
        return where(url)
    return (
        f"no Redis (REDIS_URL is not set and no orbatch command keeps an embedded one in {settings.data_dir})"
    )


async def connect_in_use(settings: Settings) -> ArqRedis | None:
    """A connection to the Redis in use (see `redis_in_use`), or None when there is none or it is away."""
    url = redis_in_use(settings)
    if url is None:
        return None
    try:
        return await connect(url, settings.queue_name, patient=False)
    except (OSError, RedisError):
        return None


def logs_for_people(settings: Settings) -> None:
    """A command a person watches logs plain lines, never JSON, printed above its progress display."""
    key = settings.openrouter_api_key.get_secret_value() if settings.openrouter_api_key else None
    level = logging.getLevelName(logging.getLogger().level)
    configure_logging(level, secrets=[key] if key else [], json=False)


def print_json(value: Any) -> None:
    """One JSON value on stdout, on one line."""
    sys.stdout.write(orjson.dumps(value).decode() + "\n")
