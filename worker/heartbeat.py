"""A worker's heartbeat: what it is and does, written to Redis every few seconds while it lives."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from datetime import UTC, datetime

from redis.asyncio import Redis

from jobs.core.constants import HEARTBEAT_MISSED_BEATS, REDIS_SPARE_SECONDS
from jobs.core.logs import get_logger
from jobs.observation.metrics import orbatch_version
from jobs.scheduling.roster import Heartbeat, forget_heartbeat, write_heartbeat
from worker.context import WorkerContext

__all__ = ["beat_forever", "stop_beating"]

log = get_logger(__name__)


async def beat_forever(ctx: WorkerContext, redis: Redis, concurrency: int) -> None:
    """Beat every ORBATCH_HEARTBEAT_SECONDS until cancelled; a Redis outage only skips beats."""
    started_at = datetime.now(UTC)
    host, pid, version = socket.gethostname(), os.getpid(), orbatch_version()
    interval = ctx.settings.heartbeat_seconds
    while True:
        meter = ctx.meter
        beat = Heartbeat(
            id=ctx.owner,
            host=host,
            pid=pid,
            version=version,
            queue=ctx.queue,
            concurrency=concurrency,
            in_flight=meter.calls,
            tasks=meter.tasks,
            answered=meter.answered,
            started_at=started_at,
            last_activity=meter.last_activity,
            beat_at=datetime.now(UTC),
            stopping=ctx.stopping.is_set(),
            simulated=ctx.simulated,
        )
        try:
            await write_heartbeat(redis, ctx.settings.queue_name, beat, interval * HEARTBEAT_MISSED_BEATS)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the worker outlives a Redis outage; its heartbeat lapses meanwhile
            log.warning("heartbeat failed", error=str(exc))
        await asyncio.sleep(interval)


async def stop_beating(ctx: WorkerContext, redis: Redis) -> None:
    """Remove this worker's heartbeat as it stops cleanly (a killed one's lapses by itself); a Redis that does
    not answer is not waited for."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(REDIS_SPARE_SECONDS):
            await forget_heartbeat(redis, ctx.settings.queue_name, ctx.owner)
