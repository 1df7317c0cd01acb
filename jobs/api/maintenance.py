"""What each API instance does besides answering: finalize ended batches, send callbacks, drop expired files.

Every step coordinates through Postgres row locks, so any number of instances can run it side by side. Batches
are expired here too (and by every worker's feeder): a window runs out even when no worker is running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.api.callbacks import deliver_due
from jobs.api.finalizer import finalize_batches
from jobs.api.storage import delete_expired_files
from jobs.core.logs import get_logger
from jobs.core.settings import Settings
from jobs.scheduling.feeder import expire_batches

__all__ = ["maintain", "maintenance_round"]

# How often each API instance finalizes finished batches, sends due callbacks and drops expired files.
MAINTENANCE_SECONDS = 1.0

log = get_logger(__name__)


async def maintenance_round(engine: AsyncEngine, client: httpx.AsyncClient, settings: Settings) -> None:
    """One round of every step; a failing step does not stop the others."""
    steps: tuple[tuple[str, Callable[[], Awaitable[int]]], ...] = (
        ("expire batches", lambda: expire_batches(engine)),
        ("finalize batches", lambda: finalize_batches(engine)),
        ("send callbacks", lambda: deliver_due(engine, client, settings)),
        ("delete expired files", lambda: delete_expired_files(engine)),
    )
    for name, step in steps:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Postgres may be restarting; the next round tries again
            log.warning("maintenance step failed", step=name, error=f"{type(exc).__name__}: {exc}")


async def maintain(engine: AsyncEngine, client: httpx.AsyncClient, settings: Settings) -> None:
    """Run rounds until cancelled."""
    while True:
        await maintenance_round(engine, client, settings)
        await asyncio.sleep(MAINTENANCE_SECONDS)
