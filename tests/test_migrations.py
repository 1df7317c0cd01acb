"""Migrations: they build exactly the model's schema, and go down and up again cleanly."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from jobs.core.db import alembic_config, create_engine, drop_database, ensure_database, upgrade
from jobs.core.models import Base
from tests.conftest import Services


@pytest.fixture
def fresh_database(services: Services) -> Iterator[str]:
    url = services.database(f"orbatch_migrations_{uuid.uuid4().hex[:8]}")
    asyncio.run(ensure_database(url))
    yield url
    asyncio.run(drop_database(url))


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
