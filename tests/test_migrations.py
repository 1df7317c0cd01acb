"""Migrations: they build exactly the model's schema, and go down and up again cleanly."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, text

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


def test_revision_0012_gives_api_batches_stored_before_it_their_model(fresh_database: str) -> None:
    """One model sent first to every request: that model; several: none; no requests: the chain's first."""
    batches = {
        # batch id: (the batch's chain, each request's own chain or None for the batch's)
        "batch_chain": (["sim/echo", "sim/backup"], [None, None]),
        "batch_lines": ([], [["sim/backup"], ["sim/backup", "sim/echo"]]),
        "batch_mixed": (["sim/echo"], [None, ["sim/backup"]]),
        "batch_refused": (["sim/spare"], []),
    }

    async def go() -> dict[str, str | None]:
        await upgrade(fresh_database, "0011")
        engine = create_engine(fresh_database, pool_size=1)
        try:
            async with engine.begin() as conn:
                for batch_id, (chain, requests) in batches.items():
                    await conn.execute(
                        text("INSERT INTO batch (id, models, max_attempts) VALUES (:id, :models, 3)"),
                        {"id": batch_id, "models": chain},
                    )
                    await conn.execute(
                        text(
                            "INSERT INTO api_batch (batch_id, owner, input_file_id, endpoint, completion_window)"
                            " VALUES (:id, 'alice', 'file-x', '/v1/chat/completions', '24h')"
                        ),
                        {"id": batch_id},
                    )
                    for line_no, own in enumerate(requests, 1):
                        await conn.execute(
                            text(
                                "INSERT INTO request (batch_id, custom_id, line_no, body, models)"
                                " VALUES (:id, :custom_id, :line_no, '{}', :models)"
                            ),
                            {"id": batch_id, "custom_id": f"q{line_no}", "line_no": line_no, "models": own},
                        )
        finally:
            await engine.dispose()
        await upgrade(fresh_database)
        engine = create_engine(fresh_database, pool_size=1)
        try:
            async with engine.connect() as conn:
                rows = (await conn.execute(text("SELECT batch_id, model FROM api_batch"))).all()
        finally:
            await engine.dispose()
        return {row.batch_id: row.model for row in rows}

    assert asyncio.run(go()) == {
        "batch_chain": "sim/echo",
        "batch_lines": "sim/backup",
        "batch_mixed": None,
        "batch_refused": "sim/spare",
    }
