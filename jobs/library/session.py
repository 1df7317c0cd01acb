"""The services a Python process works on: brought up on first use, kept while it lives, stopped at exit.

A script or a notebook calls the front many times; starting the embedded Postgres for each call would cost
seconds every time, so the session keeps what it started (and the simulator, once asked for) until `close()`
or the interpreter's exit. Other orbatch commands on the same data dir share them, as commands do.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import threading
from dataclasses import dataclass

from rich.console import Console
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.cli.context import Services, logs_for_people, services
from jobs.cli.simulated import start_simulator
from jobs.core.db import create_engine, ensure_database, upgrade
from jobs.core.settings import Settings, get_settings
from jobs.library.portal import Portal

__all__ = ["Session", "close", "session"]

# Connections the front's engine keeps: a run's watcher, its export, and a `Batch` handle's reads at once.
POOL_SIZE = 3


@dataclass(slots=True)
class _Up:
    services: Services
    stack: contextlib.ExitStack
    engine: AsyncEngine
    simulated: Settings | None = None


class Session:
    """The portal, the settings read once, the services and the engine on them, the simulator if asked for."""

    def __init__(self) -> None:
        self.portal = Portal()
        self._lock = asyncio.Lock()
        self._up: _Up | None = None
        self._simulator_stack: contextlib.AsyncExitStack | None = None

    async def settings(self, simulator: bool, err: Console) -> tuple[Settings, AsyncEngine]:
        """The settings a call works with (pointing at the simulator when asked for) and the engine."""
        async with self._lock:
            if self._up is None:
                given = get_settings()
                logs_for_people(given)
                stack = contextlib.ExitStack()
                # `services()` runs its own loop to migrate a new database: off this loop, on a thread.
                up = await asyncio.to_thread(stack.enter_context, services(given, redis=True))
                # A DATABASE_URL's database may be new or behind the code, as for `orbatch run`.
                await ensure_database(up.settings.database_url)
                await upgrade(up.settings.database_url)
                engine = create_engine(up.settings.database_url, pool_size=POOL_SIZE)
                self._up = _Up(up, stack, engine)
            up_ = self._up
            if not simulator:
                return up_.services.settings, up_.engine
            if up_.simulated is None:
                self._simulator_stack = contextlib.AsyncExitStack()
                up_.simulated = await start_simulator(up_.services.settings, self._simulator_stack, err)
            return up_.simulated, up_.engine

    @property
    def local(self) -> Services | None:
        """The services in use, once up."""
        return None if self._up is None else self._up.services

    async def _close_on_portal(self) -> contextlib.ExitStack | None:
        up, self._up = self._up, None
        if self._simulator_stack is not None:
            await self._simulator_stack.aclose()
            self._simulator_stack = None
        if up is None:
            return None
        await up.engine.dispose()
        return up.stack

    def close(self) -> None:
        """Stop what this session started (the last user of an embedded service stops it) and the portal."""
        if self.portal.on_portal():
            raise RuntimeError("orbatch.close() cannot be called from orbatch's own thread")
        stack: contextlib.ExitStack | None = None
        if self._up is not None or self._simulator_stack is not None:
            with contextlib.suppress(Exception):
                stack = self.portal.submit(self._close_on_portal()).result(timeout=30)
        self.portal.close()
        if stack is not None:
            # Stopping embedded services is blocking work, done from a thread that runs no loop.
            closer = threading.Thread(target=stack.close, name="orbatch-close")
            closer.start()
            closer.join(timeout=60)


# The process's one session, held in a dict so that `close()` can let it go and the next call make another.
_current: dict[str, Session] = {}
_current_lock = threading.Lock()


def session() -> Session:
    """The process's session, made on first use."""
    with _current_lock:
        if "session" not in _current:
            _current["session"] = Session()
        return _current["session"]


def close() -> None:
    """Close the process's session, if any; the next call starts a new one (reading the settings again)."""
    with _current_lock:
        current = _current.pop("session", None)
    if current is not None:
        current.close()


atexit.register(close)
