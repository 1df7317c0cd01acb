"""The async engine and sessions, creating the database if it is missing, and Alembic upgrades."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
import orjson
from sqlalchemy import Connection
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "alembic_config",
    "conflicted",
    "connection_lost",
    "create_engine",
    "drop_database",
    "ensure_database",
    "retry_conflicts",
    "upgrade",
]

T = TypeVar("T")

# Deadlock and serialization failure: the transaction did nothing and may simply run again.
_CONFLICT_SQLSTATES = frozenset({"40P01", "40001"})

# This module sits two folders below the repository root, beside which Alembic's folder is.
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _async_url(database_url: str) -> URL:
    url = make_url(database_url)
    if url.drivername in ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2"):
        url = url.set(drivername="postgresql+asyncpg")
    return url


def create_engine(
    database_url: str, pool_size: int = 10, pre_ping: bool = True, max_overflow: int | None = None
) -> AsyncEngine:
    """An asyncpg engine that speaks JSON through orjson and survives a database restart.

    `pre_ping` tests each connection as it is checked out (three round trips with asyncpg). The worker turns it
    off: its writes retry on a lost connection anyway, and the first failure recycles the whole pool.
    """
    return create_async_engine(
        _async_url(database_url),
        pool_size=pool_size,
        max_overflow=pool_size if max_overflow is None else max_overflow,
        pool_pre_ping=pre_ping,
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
        # Parameters are prompts and answers: an error's text (logged, shown) never carries them.
        hide_parameters=True,
    )


def connection_lost(exc: BaseException) -> bool:
    """True for an error that says the database is unreachable for now, not that the statement is wrong."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError):
            return True
        state = str(getattr(exc.orig, "sqlstate", None) or "")
        # 08: connection exceptions; 57P: shutting down, crashed, starting up; 53: out of connections.
        return state.startswith(("08", "57P", "53"))
    return isinstance(exc, OSError)


def conflicted(exc: BaseException) -> bool:
    """True for a transaction Postgres rolled back for a deadlock or a serialization conflict: it did nothing and
    may simply run again."""
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in _CONFLICT_SQLSTATES


async def retry_conflicts(transaction: Callable[[], Awaitable[T]], attempts: int = 5) -> T:
    """Run a transaction, again if Postgres rolled it back for a deadlock or a serialization conflict."""
    for attempt in range(1, attempts + 1):
        try:
            return await transaction()
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) not in _CONFLICT_SQLSTATES or attempt == attempts:
                raise
            await asyncio.sleep(0.05 * attempt)
    raise AssertionError("unreachable")


async def _connect_maintenance(url: URL) -> Any:
    # The server's own `postgres` database, reached as the URL says (TCP, or a Unix socket in `?host=`).
    dsn = url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    return await asyncpg.connect(dsn)


async def ensure_database(database_url: str) -> bool:
    """Create the database named in the URL if the server lacks it; True when it was created."""
    url = _async_url(database_url)
    name = url.database
    if not name:
        raise ValueError("DATABASE_URL names no database")
    conn = await _connect_maintenance(url)
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return False
        quoted = '"' + name.replace('"', '""') + '"'
        await conn.execute(f"CREATE DATABASE {quoted}")
        return True
    finally:
        await conn.close()


async def drop_database(database_url: str) -> None:
    """Drop the database named in the URL, disconnecting whoever still uses it (scratch databases)."""
    url = _async_url(database_url)
    conn = await _connect_maintenance(url)
    try:
        quoted = '"' + (url.database or "").replace('"', '""') + '"'
        await conn.execute(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
    finally:
        await conn.close()


def alembic_config(database_url: str) -> Config:
    """An Alembic config for the packaged migrations, pointed at the given database."""
    from alembic.config import Config  # Alembic takes a second to import; only upgrades need it.

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser reads `%` as interpolation: a socket path or a password with `%` must be escaped.
    url = _async_url(database_url).render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def _upgrade_on(connection: Connection, config: Config, revision: str) -> None:
    from alembic import command

    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def upgrade(database_url: str, revision: str = "head") -> None:
    """Apply migrations up to `revision` on the database."""
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade_on, alembic_config(database_url), revision)
    finally:
        await engine.dispose()
