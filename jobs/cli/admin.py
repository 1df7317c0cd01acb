"""`orbatch db`: the database's schema."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from jobs.cli.terminal import err, say
from jobs.core.db import ensure_database, upgrade
from jobs.core.settings import get_settings

__all__ = ["db_app", "db_upgrade"]

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Create the database if it is missing and apply the migrations (Alembic)."""
    settings = get_settings()

    async def go() -> bool:
        created = await ensure_database(settings.database_url)
        await upgrade(settings.database_url, revision)
        return created

    created = asyncio.run(go())
    say(err, ("Created the database; " if created else "") + f"schema at {revision}.")
