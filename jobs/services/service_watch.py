"""Whether the services a run needs still answer: an embedded one's process at once, else a bounded silence."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.core.logs import redact
from jobs.services.embedded import LocalServices

__all__ = ["ServiceWatch"]

# A ping that takes longer than this counts as no answer.
_PING_SECONDS = 2.0


@dataclass(slots=True)
class _Silence:
    """When a service stopped answering (None while it answers), and what its last failure said."""

    since: float | None = None
    error: str = ""

    def heard(self) -> None:
        self.since = None

    def failed(self, error: BaseException) -> None:
        if self.since is None:
            self.since = time.monotonic()
        self.error = redact(str(error).splitlines()[0] if str(error) else type(error).__name__)


@dataclass(slots=True)
class ServiceWatch:
    """Watches Postgres and Redis for a run: `lost()` returns, with a sentence, once one of them is gone."""

    engine: AsyncEngine
    redis_url: str
    services: LocalServices | None = None
    lost_after: float = 30.0
    interval: float = 1.0
    _silences: dict[str, _Silence] = field(default_factory=dict)

    def nothing_can_be_recorded(self) -> bool:
        """The run's Postgres is gone for good (an embedded one exited): calls in flight cannot be stored."""
        return self.services is not None and self.services.postgres_lost()

    async def lost(self) -> str:
        """Wait until a service is lost; what was lost, as a user is told."""
        redis = Redis.from_url(
            self.redis_url, socket_timeout=_PING_SECONDS, socket_connect_timeout=_PING_SECONDS
        )
        try:
            while True:
                if self.services is not None and (gone := self.services.lost()):
                    return gone
                await self._ping("Redis (REDIS_URL)", redis.ping())
                await self._ping("Postgres (DATABASE_URL)", self._select_one())
                for name, silence in self._silences.items():
                    if silence.since is not None and time.monotonic() - silence.since >= self.lost_after:
                        return f"{name} has not answered for {self.lost_after:.0f} s ({silence.error})"
                await asyncio.sleep(self.interval)
        finally:
            await redis.aclose()

    async def _select_one(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def _ping(self, name: str, check: Awaitable[object]) -> None:
        silence = self._silences.setdefault(name, _Silence())
        try:
            async with asyncio.timeout(_PING_SECONDS):
                await check
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure to answer is silence; only its length decides
            silence.failed(exc)
        else:
            silence.heard()
