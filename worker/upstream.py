"""The account a worker's upstream gives it, as a throttle: read at start, and read again while the worker runs.

A worker that started before its simulator (a compose stack starting up), or whose simulator was restarted, or
whose account bought credits, adopts what `GET /key` says now: its limits, whether it is a simulator, and which
one. A simulator that is new to the fleet's Redis is a new account whose counts start from nothing.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.core.constants import TASK_TIMEOUT_MARGIN_SECONDS, THROTTLE_KEY
from jobs.core.logs import get_logger
from jobs.core.settings import Settings
from jobs.scheduling.fleet import breaker_key, kind_queue, limits_key, throttle_namespace
from worker import records
from worker.account import AccountLimits, account_limits
from worker.context import WorkerContext
from worker.openrouter import OpenRouterClient
from worker.throttle import Throttle, ThrottleLimits

__all__ = ["adopt", "throttle_for", "watch_upstream"]

# A worker reads its upstream's GET /key again this often, and adopts what changed (limits, a new simulator);
# while it cannot be read (the upstream starts after the worker), every few seconds.
ACCOUNT_RECHECK_SECONDS = 60.0
ACCOUNT_RETRY_SECONDS = 5.0

log = get_logger(__name__)

# The throttle's keys that count against an account; a new simulator starts without them.
_COUNTED = ("free-tat", "free-day", "cooldown:free", "cooldown:paid", "breaker-streak")


def _limits(settings: Settings, account: AccountLimits) -> ThrottleLimits:
    return ThrottleLimits(
        free_per_window=account.free_per_window,
        window_seconds=account.window_seconds,
        margin=settings.free_rate_margin,
        free_per_day=account.free_per_day,
        max_in_flight=settings.max_in_flight,
        max_wait_seconds=settings.max_throttle_wait,
        # Renewed with the lease: a killed worker's permits lapse as soon as its leases do.
        permit_ttl_seconds=settings.lease_seconds * 2,
        day_seconds=account.day_seconds,
        breaker_run=settings.breaker_5xx_run,
        probe_base_seconds=settings.breaker_probe_base,
        probe_max_seconds=settings.breaker_probe_max,
        probe_ttl_seconds=settings.request_timeout + TASK_TIMEOUT_MARGIN_SECONDS,
    )


def throttle_for(settings: Settings, redis: Redis, engine: AsyncEngine, account: AccountLimits) -> Throttle:
    """The throttle of this account: a simulator's counts live apart from a real account's in the same Redis."""
    counting_since = account.counting_since

    async def count_since(since: datetime) -> int:
        # A simulator counts only the calls it served itself: none made before it started (or was reset).
        if counting_since is not None:
            since = max(since, datetime.fromtimestamp(counting_since, UTC))
        return await records.free_calls_since(engine, since, account.simulated)

    namespace = throttle_namespace(settings.queue_name, account.simulated)
    return Throttle(redis, namespace, _limits(settings, account), count_since)


async def adopt(ctx: WorkerContext, redis: Redis, account: AccountLimits) -> None:
    """Make `account` the one this worker throttles by, and publish its limits for watchers."""
    throttle = throttle_for(ctx.settings, redis, ctx.engine, account)
    namespace = throttle.namespace
    published = await redis.hget(limits_key(namespace), "instance")  # type: ignore[misc]
    if account.instance is not None and (published or b"").decode() != account.instance:
        # A simulator the fleet has not seen: its quota is whole, whatever an earlier one had counted.
        names = [THROTTLE_KEY.format(queue=namespace, name=n) for n in _COUNTED]
        await redis.delete(*names, breaker_key(namespace))
    limits = throttle.limits
    await redis.hset(  # type: ignore[misc]
        limits_key(namespace),
        mapping={
            "free_per_window": limits.free_per_window,
            "window_seconds": limits.window_seconds,
            "free_per_day": limits.free_per_day,
            "margin": limits.margin,
            "day_seconds": limits.day_seconds,
            "instance": account.instance or "",
        },
    )
    ctx.throttle = throttle
    ctx.simulated = account.simulated
    ctx.account = account
    if ctx.follow is not None:
        # A fleet worker takes the jobs of its upstream's kind, from that kind's queue.
        ctx.queue = kind_queue(ctx.settings.queue_name, account.simulated)
        ctx.follow(ctx.queue)


def _same(a: AccountLimits, b: AccountLimits) -> bool:
    # Whether GET /key was read does not change the account; only what it said does.
    return replace(a, read=True) == replace(b, read=True)


async def watch_upstream(ctx: WorkerContext, redis: Redis, client: OpenRouterClient) -> None:
    """Read GET /key again now and then (often while it cannot be read) and adopt what changed; until cancelled."""
    while True:
        current = ctx.account
        await asyncio.sleep(
            ACCOUNT_RETRY_SECONDS if current is None or not current.read else ACCOUNT_RECHECK_SECONDS
        )
        try:
            account = await account_limits(ctx.settings, client, quiet=True)
            if current is not None and (_same(account, current) or not account.read):
                if account.read and not current.read:
                    ctx.account = account
                continue
            await adopt(ctx, redis, account)
            log.info(
                "upstream changed: limits read again",
                simulated=account.simulated,
                instance=account.instance,
                free_per_window=account.free_per_window,
                window_seconds=account.window_seconds,
                free_per_day=account.free_per_day,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a Redis or upstream blip only delays the next reading
            log.warning("could not read the upstream's limits again", error=str(exc))
