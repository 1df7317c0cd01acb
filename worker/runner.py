"""The arq worker as orbatch runs it: shared clients built once, the feeder loop, and burst mode."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import socket
import uuid
from typing import Any, cast

from arq import cron, func
from arq.connections import ArqRedis
from arq.typing import WorkerCoroutine
from arq.worker import Worker

from jobs.catalog import load_catalog
from jobs.constants import (
    BURST_CHECK_SECONDS,
    CREDITED_DAILY_REQUESTS,
    FEEDER_LOCK_KEY,
    FREE_TIER_DAILY_REQUESTS,
    LIMITS_KEY,
    RUN_REQUEST_FUNCTION,
    SWEEP_SECONDS,
    TASK_TIMEOUT_MARGIN_SECONDS,
)
from jobs.db import create_engine
from jobs.feeder import feed
from jobs.logs import get_logger
from jobs.queue import job_dumps, job_loads
from jobs.queue import redis_settings as arq_redis_settings
from jobs.settings import Settings, get_settings
from worker import records
from worker.context import CONTEXT_KEY, WorkerContext, context
from worker.dispatch import ClaimingWorker
from worker.openrouter import OpenRouterClient
from worker.pricing import PriceBook
from worker.task import run_request
from worker.throttle import Throttle, ThrottleLimits

__all__ = ["build_worker", "daily_free_limit", "run_worker", "sweep"]

log = get_logger(__name__)

_RELEASE_LOCK_LUA = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)


async def daily_free_limit(settings: Settings, client: OpenRouterClient) -> int:
    """The free-model requests allowed per day: the setting, else what GET /key implies, else 50."""
    if settings.free_requests_per_day is not None:
        return settings.free_requests_per_day
    try:
        key = (await client.get_json("key"))["data"]
    except Exception as exc:  # a key endpoint that is down must not stop the worker; assume the lower limit
        log.warning("could not read GET /key; assuming 50 free requests a day", error=str(exc))
        return FREE_TIER_DAILY_REQUESTS
    return FREE_TIER_DAILY_REQUESTS if key.get("is_free_tier", True) else CREDITED_DAILY_REQUESTS


async def _feed_once(ctx: WorkerContext, redis: ArqRedis) -> None:
    """Run one feeder tick unless another worker holds the feeder lock."""
    settings = ctx.settings
    lock_ms = max(2000, int(settings.feed_interval * 4000))
    lock_key = FEEDER_LOCK_KEY.format(queue=settings.queue_name)
    if not await redis.set(lock_key, ctx.owner, nx=True, px=lock_ms):
        return
    try:
        report = await feed(
            ctx.engine, redis, settings.queue_name, settings.feed_window, requeue_after=settings.requeue_after
        )
        if report.redis_reset or report.expired_leases or report.resumed_batches or report.finalized_batches:
            log.info(
                "feeder",
                enqueued=report.enqueued,
                expired_leases=report.expired_leases,
                resumed_batches=report.resumed_batches,
                finalized_batches=report.finalized_batches,
                redis_reset=report.redis_reset,
            )
    finally:
        await redis.eval(_RELEASE_LOCK_LUA, 1, lock_key, ctx.owner)  # type: ignore[misc]


async def sweep(arq_ctx: dict[str, Any]) -> None:
    """arq cron job: one feeder tick, a backstop should a worker's own feeder loop ever stall."""
    await _feed_once(context(arq_ctx), arq_ctx["redis"])


async def _feeder_loop(ctx: WorkerContext, redis: ArqRedis) -> None:
    while True:
        try:
            await _feed_once(ctx, redis)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the loop must outlive a Redis or Postgres outage
            log.warning("feeder tick failed", error=str(exc))
        await asyncio.sleep(ctx.settings.feed_interval)


async def _startup(arq_ctx: dict[str, Any]) -> None:
    settings: Settings = arq_ctx.get("settings") or get_settings()
    concurrency: int = arq_ctx.get("concurrency") or settings.concurrency
    # No pre-ping on the hot path: it costs three round trips per statement (see jobs.db.create_engine).
    # A task holds a connection only while it writes, so the pool is capped well below the concurrency.
    engine = create_engine(
        settings.database_url, pool_size=min(concurrency + 2, settings.db_pool_max), pre_ping=False
    )
    api_key = settings.api_key()
    client = OpenRouterClient(
        settings.openrouter_base_url,
        api_key,
        timeout=settings.request_timeout,
        connect_timeout=settings.connect_timeout,
        max_connections=concurrency,
        app_url=settings.app_url,
        app_title=settings.app_title,
    )
    limits = ThrottleLimits(
        free_per_window=settings.free_requests_per_minute,
        window_seconds=settings.free_window_seconds,
        margin=settings.free_rate_margin,
        free_per_day=await daily_free_limit(settings, client),
        max_in_flight=settings.max_in_flight,
        max_wait_seconds=settings.max_throttle_wait,
        # Renewed with the lease: a killed worker's permits lapse as soon as its leases do.
        permit_ttl_seconds=settings.lease_seconds * 2,
    )
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    ctx = WorkerContext(
        settings=settings,
        engine=autocommit,
        client=client,
        throttle=Throttle(
            arq_ctx["redis"], settings.queue_name, limits, lambda: records.free_calls_today(autocommit)
        ),
        prices=PriceBook(
            lambda max_age: load_catalog(engine, settings.openrouter_base_url, api_key, max_age)
        ),
        owner=f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
    )
    arq_ctx[CONTEXT_KEY] = ctx
    await arq_ctx["redis"].hset(
        LIMITS_KEY.format(queue=settings.queue_name),
        mapping={
            "free_per_window": limits.free_per_window,
            "window_seconds": limits.window_seconds,
            "free_per_day": limits.free_per_day,
            "margin": limits.margin,
        },
    )
    arq_ctx["engine"] = engine
    arq_ctx["feeder"] = asyncio.create_task(_feeder_loop(ctx, arq_ctx["redis"]))
    log.info(
        "worker started",
        owner=ctx.owner,
        concurrency=concurrency,
        base_url=settings.openrouter_base_url,
        free_per_minute=limits.free_per_window,
        free_per_day=limits.free_per_day,
        max_in_flight=limits.max_in_flight,
    )


async def _shutdown(arq_ctx: dict[str, Any]) -> None:
    feeder: asyncio.Task[None] | None = arq_ctx.get("feeder")
    if feeder is not None:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
    ctx = arq_ctx.get(CONTEXT_KEY)
    if isinstance(ctx, WorkerContext):
        await ctx.client.aclose()
    engine = arq_ctx.get("engine")
    if engine is not None:
        await engine.dispose()


def _settings_kwargs(settings: Settings, concurrency: int) -> dict[str, Any]:
    return {
        "functions": [
            func(
                cast(WorkerCoroutine, run_request),
                name=RUN_REQUEST_FUNCTION,
                timeout=settings.request_timeout + TASK_TIMEOUT_MARGIN_SECONDS,
                # Attempts are counted in Postgres; arq's own tries only guard against a poisoned job.
                max_tries=1000,
                keep_result=0,
            )
        ],
        "cron_jobs": [
            cron(
                cast(WorkerCoroutine, sweep),
                name="sweep",
                second=set(SWEEP_SECONDS),
                run_at_startup=False,
                timeout=60,
                max_tries=1,
                keep_result=0,
            )
        ],
        "on_startup": _startup,
        "on_shutdown": _shutdown,
        "redis_settings": arq_redis_settings(settings.redis_url),
        "queue_name": settings.queue_name,
        "max_jobs": concurrency,
        "keep_result": 0,
        "job_serializer": job_dumps,
        "job_deserializer": job_loads,
        "poll_delay": settings.poll_delay,
        "ctx": {"settings": settings, "concurrency": concurrency},
    }


def __getattr__(name: str) -> Any:
    """`arq worker.runner.WorkerSettings`: the settings class, built (and the environment read) on first use.

    Built lazily so that importing this module reads no settings; arq reads the class's own attributes.
    """
    if name != "WorkerSettings":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    settings = get_settings()
    return type(
        "WorkerSettings", (), _settings_kwargs(settings, settings.concurrency) | {"__module__": __name__}
    )


def build_worker(settings: Settings, concurrency: int | None = None, handle_signals: bool = True) -> Worker:
    """An arq Worker for orbatch's task (`handle_signals=False` when its host process handles Ctrl-C)."""
    return ClaimingWorker(
        **_settings_kwargs(settings, concurrency or settings.concurrency), handle_signals=handle_signals
    )


async def _wait_until_idle(worker: Worker, ctx_holder: dict[str, Any]) -> None:
    """Return once no request can run now and this worker has nothing in hand."""
    settled = 0
    while True:
        await asyncio.sleep(BURST_CHECK_SECONDS)
        ctx = ctx_holder.get(CONTEXT_KEY)
        if not isinstance(ctx, WorkerContext):
            continue
        try:
            idle = not worker.tasks and await records.nothing_left(ctx.engine)
        except Exception as exc:  # a database blip must not end a burst run early
            log.warning("burst check failed", error=str(exc))
            idle = False
        settled = settled + 1 if idle else 0
        # Twice in a row: a request between its lease and its record is never seen as "nothing left".
        if settled >= 2:
            with contextlib.suppress(Exception):
                await feed(ctx.engine, ctx_holder["redis"], ctx.settings.queue_name, ctx.settings.feed_window)
            return


def _dump_tasks() -> None:
    """SIGUSR2: log what every task of this worker is waiting on (for a worker that seems stuck)."""
    for task in asyncio.all_tasks():
        stream = io.StringIO()
        task.print_stack(limit=12, file=stream)
        log.warning("task stack", task=task.get_name(), stack=stream.getvalue())


async def run_worker(settings: Settings, concurrency: int | None = None, burst: bool = False) -> None:
    """Run a worker until stopped, or with `burst` until no request is left to run."""
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, _dump_tasks)
    worker = build_worker(settings, concurrency)
    if not burst:
        try:
            # arq cancels its main task on SIGINT/SIGTERM: that is the normal way out.
            with contextlib.suppress(asyncio.CancelledError):
                await worker.async_run()
        finally:
            await worker.close()
        return
    main = asyncio.create_task(worker.async_run())
    watcher = asyncio.create_task(_wait_until_idle(worker, worker.ctx))
    try:
        done, _ = await asyncio.wait({main, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if watcher in done:
            main.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await main
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await worker.close()
