"""Migrations: they build exactly the model's schema, and go down and up again cleanly."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import asyncpg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from jobs.db import alembic_config, create_engine, upgrade
from jobs.models import Base
from tests.conftest import POSTGRES_URL


@pytest.fixture
def fresh_database() -> Iterator[str]:
    name = f"orbatch_migrations_{uuid.uuid4().hex[:8]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(f"{POSTGRES_URL}/postgres")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    yield f"{POSTGRES_URL}/{name}"
    asyncio.run(admin(f'DROP DATABASE "{name}" WITH (FORCE)'))


def _differences(connection: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


def test_migrations_build_the_models_schema_and_round_trip(fresh_database: str) -> None:
    async def go() -> None:
        await upgrade(fresh_database)
        engine = create_engine(fresh_database, pool_size=1)
        try:
            async with engine.connect() as conn:
                assert await conn.run_sync(_differences) == []

            def down_and_up(connection: Connection) -> None:
                config = alembic_config(fresh_database)
                config.attributes["connection"] = connection
                command.downgrade(config, "base")
                command.upgrade(config, "head")

            async with engine.begin() as conn:
                await conn.run_sync(down_and_up)
            async with engine.connect() as conn:
                assert await conn.run_sync(_differences) == []
        finally:
            await engine.dispose()

    asyncio.run(go())
