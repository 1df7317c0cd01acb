"""The arq worker as orbatch runs it: shared clients built once, the feeder loop, graceful stops, burst mode."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import os
import signal
import socket
import uuid
from datetime import UTC, datetime
from typing import Any, cast

from arq import cron, func
from arq.connections import ArqRedis
from arq.typing import WorkerCoroutine
from arq.worker import Worker

from jobs.core.constants import (
    FEEDER_LOCK_KEY,
    PERSIST_DEADLINE_SECONDS,
    RUN_REQUEST_FUNCTION,
    TASK_TIMEOUT_MARGIN_SECONDS,
)
from jobs.core.db import create_engine
from jobs.core.logs import get_logger
from jobs.core.settings import Settings, get_settings
from jobs.observation.metrics import BUILD, CONCURRENCY, orbatch_version
from jobs.scheduling.feeder import feed
from jobs.scheduling.queue import job_dumps, job_loads
from jobs.scheduling.queue import redis_settings as arq_redis_settings
from jobs.submission.catalog import load_catalog
from worker import records
from worker.account import account_limits
from worker.batch_api import BatchApiClient
from worker.context import CONTEXT_KEY, WorkerContext, context
from worker.dispatch import ClaimingWorker
from worker.heartbeat import beat_forever, stop_beating
from worker.meter import Meter
from worker.metrics_server import MetricsServer
from worker.openrouter import OpenRouterClient
from worker.plan import WorkerPlan
from worker.pricing import PriceBook
from worker.remote_batches import STOP_WAIT_SECONDS, drive_forever
from worker.replycheck import ReplyChecker
from worker.report import where
from worker.shutdown import GracefulStop, close_worker
from worker.task import run_request
from worker.upstream import adopt, throttle_for, watch_upstream

__all__ = ["build_worker", "dump_tasks", "run_worker", "sweep", "task_timeout"]

# Seconds of each minute at which the arq cron sweeper runs a feeder tick (a backstop for the feeder loop).
SWEEP_SECONDS = frozenset({0, 15, 30, 45})
# How often a burst worker asks Postgres whether anything is left to run.
BURST_CHECK_SECONDS = 0.5

log = get_logger(__name__)

_RELEASE_LOCK_LUA = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)


async def _feed_once(ctx: WorkerContext, redis: ArqRedis, plan: WorkerPlan) -> None:
    """Run one feeder tick unless another worker holds the feeder lock (a run's own feeder takes none)."""
    settings = ctx.settings
    lock_ms = max(2000, int(settings.feed_interval * 4000))
    lock_key = FEEDER_LOCK_KEY.format(queue=ctx.queue)
    if not await redis.set(lock_key, ctx.owner, nx=True, px=lock_ms):
        return
    try:
        # While the outage breaker is open nothing is fed, but one request when its probe is due.
        breaker = await ctx.throttle.breaker()
        at_most = None if breaker is None else (1 if breaker.probe_due(datetime.now(UTC)) else 0)
        report = await feed(
            ctx.engine,
            redis,
            settings.queue_name,
            settings.feed_window,
            batch_id=plan.only_batch,
            requeue_after=settings.requeue_after,
            queue=ctx.queue,
            at_most=at_most,
            # A fleet worker feeds the batches of its upstream's kind only, into that kind's queue.
            simulated=ctx.simulated if plan.only_batch is None else None,
            shared=plan.only_batch is None,
        )
        ctx.report.finished(report.finalized_batches)
        if report.redis_reset or report.expired_leases or report.resumed_batches:
            log.info(
                "feeder",
                enqueued=report.enqueued,
                expired_leases=report.expired_leases,
                resumed_batches=report.resumed_batches,
                finalized_batches=len(report.finalized_batches),
                redis_reset=report.redis_reset,
            )
    finally:
        await redis.eval(_RELEASE_LOCK_LUA, 1, lock_key, ctx.owner)  # type: ignore[misc]


async def sweep(arq_ctx: dict[str, Any]) -> None:
    """arq cron job: one feeder tick, a backstop should a worker's own feeder loop ever stall."""
    await _feed_once(context(arq_ctx), arq_ctx["redis"], arq_ctx["plan"])


async def _feeder_loop(ctx: WorkerContext, redis: ArqRedis, plan: WorkerPlan) -> None:
    while True:
        try:
            await _feed_once(ctx, redis, plan)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the loop must outlive a Redis or Postgres outage
            log.warning("feeder tick failed", error=str(exc))
        # The interval, or less when a task asks for a tick now (a split record's next part is due).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.feed_now.wait(), ctx.settings.feed_interval)
        ctx.feed_now.clear()


async def _startup(arq_ctx: dict[str, Any]) -> None:
    settings: Settings = arq_ctx["settings"]
    concurrency: int = arq_ctx["concurrency"]
    plan: WorkerPlan = arq_ctx["plan"]
    # No pre-ping on the hot path: it costs three round trips per statement (see jobs.core.db.create_engine).
    # A task holds a connection only while it writes, so the pool is capped well below the concurrency.
    engine = create_engine(
        settings.database_url,
        pool_size=min(concurrency + 2, settings.db_pool_max),
        pre_ping=False,
        max_overflow=0,
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
        max_response_bytes=settings.max_response_bytes,
    )
    account = await account_limits(settings, client)
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    prices = PriceBook(lambda max_age: load_catalog(engine, settings.openrouter_base_url, api_key, max_age))
    ctx = WorkerContext(
        settings=settings,
        engine=autocommit,
        client=client,
        throttle=throttle_for(settings, arq_ctx["redis"], autocommit, account),
        prices=prices,
        replies=ReplyChecker(settings.reply_check_seconds),
        owner=f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
        simulated=account.simulated,
        meter=Meter(prices.listed),
        queue=plan.queue,
    )
    worker: Worker | None = arq_ctx.get("arq_worker")
    if plan.only_batch is None and worker is not None:
        ctx.follow = functools.partial(setattr, worker, "queue_name")
    await adopt(ctx, arq_ctx["redis"], account)
    arq_ctx[CONTEXT_KEY] = ctx
    await _start_watching(arq_ctx, ctx, plan, concurrency)
    arq_ctx["engine"] = engine
    arq_ctx["feeder"] = asyncio.create_task(_feeder_loop(ctx, arq_ctx["redis"], plan))
    arq_ctx["reporter"] = asyncio.create_task(ctx.report.every())
    arq_ctx["upstream"] = asyncio.create_task(watch_upstream(ctx, arq_ctx["redis"], client))
    # The batch lane: remote batches of OpenRouter's Batch API, formed, sent, polled and stored.
    batch_api = BatchApiClient(
        settings.openrouter_base_url,
        api_key,
        timeout=settings.request_timeout,
        connect_timeout=settings.connect_timeout,
        app_url=settings.app_url,
        app_title=settings.app_title,
    )
    remote_stop = asyncio.Event()
    arq_ctx["batch_api"] = batch_api
    arq_ctx["remote_stop"] = remote_stop
    arq_ctx["remote"] = asyncio.create_task(drive_forever(ctx, batch_api, plan.only_batch, remote_stop))
    limits = ctx.throttle.limits
    log.info(
        "worker started",
        owner=ctx.owner,
        queue=ctx.queue,
        postgres=where(settings.database_url),
        redis=where(settings.redis_url),
        concurrency=concurrency,
        base_url=settings.openrouter_base_url,
        simulated=account.simulated,
        free_per_window=limits.free_per_window,
        window_seconds=limits.window_seconds,
        free_per_day=limits.free_per_day,
        max_in_flight=limits.max_in_flight,
    )


async def _start_watching(
    arq_ctx: dict[str, Any], ctx: WorkerContext, plan: WorkerPlan, concurrency: int
) -> None:
    """The worker's heartbeat in Redis, and its /metrics when ORBATCH_METRICS_PORT (--metrics-port) asks."""
    BUILD.info({"version": orbatch_version()})
    CONCURRENCY.set(concurrency)
    if ctx.settings.metrics_port is not None:
        metrics_server = MetricsServer(arq_ctx["redis"], ctx.settings)
        port = await metrics_server.start(ctx.settings.metrics_port)
        arq_ctx["metrics_server"] = metrics_server
        log.info("metrics served", port=port, path="/metrics")
    arq_ctx["heartbeat"] = asyncio.create_task(beat_forever(ctx, arq_ctx["redis"], concurrency))


async def _stop_watching(arq_ctx: dict[str, Any], ctx: WorkerContext) -> None:
    await stop_beating(ctx, arq_ctx["redis"])
    metrics_server: MetricsServer | None = arq_ctx.pop("metrics_server", None)
    if metrics_server is not None:
        await metrics_server.stop()


async def _stop_remote(arq_ctx: dict[str, Any]) -> None:
    """Let the batch lane's step in hand end (a create in flight is answered and its id stored), bounded."""
    remote: asyncio.Task[None] | None = arq_ctx.get("remote")
    stop: asyncio.Event | None = arq_ctx.get("remote_stop")
    if remote is None or stop is None:
        return
    stop.set()
    try:
        async with asyncio.timeout(STOP_WAIT_SECONDS):
            await asyncio.shield(remote)
    except (TimeoutError, asyncio.CancelledError):
        remote.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await remote
    except Exception as exc:  # its failure must not stop the shutdown
        log.warning("batch lane stopped with an error", error=str(exc))
    batch_api: BatchApiClient | None = arq_ctx.get("batch_api")
    if batch_api is not None:
        await batch_api.aclose()


async def _shutdown(arq_ctx: dict[str, Any]) -> None:
    await _stop_remote(arq_ctx)
    for name in ("feeder", "reporter", "heartbeat", "upstream"):
        background: asyncio.Task[None] | None = arq_ctx.get(name)
        if background is not None:
            background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await background
    ctx = arq_ctx.get(CONTEXT_KEY)
    if isinstance(ctx, WorkerContext):
        await _stop_watching(arq_ctx, ctx)
        ctx.report.summary()
        await ctx.client.aclose()
        await ctx.replies.aclose()
    engine = arq_ctx.get("engine")
    if engine is not None:
        await engine.dispose()


def task_timeout(settings: Settings) -> float:
    """arq's timeout for a task: longer than any task within its bounds can take (throttle, call, writes)."""
    return (
        settings.max_throttle_wait
        + settings.request_timeout
        + PERSIST_DEADLINE_SECONDS
        + TASK_TIMEOUT_MARGIN_SECONDS
    )


def _settings_kwargs(settings: Settings, concurrency: int, plan: WorkerPlan | None = None) -> dict[str, Any]:
    plan = plan or WorkerPlan(settings.queue_name)
    return {
        "functions": [
            func(
                cast(WorkerCoroutine, run_request),
                name=RUN_REQUEST_FUNCTION,
                timeout=task_timeout(settings),
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
        "queue_name": plan.queue,
        "max_jobs": concurrency,
        "keep_result": 0,
        "job_serializer": job_dumps,
        "job_deserializer": job_loads,
        "poll_delay": settings.poll_delay,
        "ctx": {"settings": settings, "concurrency": concurrency, "plan": plan},
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


def build_worker(
    settings: Settings, concurrency: int | None = None, plan: WorkerPlan | None = None
) -> Worker:
    """An arq Worker for orbatch's task; the process that runs it handles its signals (see GracefulStop)."""
    return ClaimingWorker(
        **_settings_kwargs(settings, concurrency or settings.concurrency, plan), handle_signals=False
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
            idle = not worker.tasks and await records.nothing_left(ctx.engine, ctx.simulated)
        except Exception as exc:  # a database blip must not end a burst run early
            log.warning("burst check failed", error=str(exc))
            idle = False
        settled = settled + 1 if idle else 0
        # Twice in a row: a request between its lease and its record is never seen as "nothing left".
        if settled >= 2:
            with contextlib.suppress(Exception):
                plan: WorkerPlan = ctx_holder["plan"]
                await feed(
                    ctx.engine,
                    ctx_holder["redis"],
                    ctx.settings.queue_name,
                    ctx.settings.feed_window,
                    batch_id=plan.only_batch,
                    queue=ctx.queue,
                    simulated=ctx.simulated if plan.only_batch is None else None,
                    shared=plan.only_batch is None,
                )
            return


def dump_tasks() -> None:
    """SIGUSR2: log what every task of this worker is waiting on (for a worker that seems stuck)."""
    for task in asyncio.all_tasks():
        stream = io.StringIO()
        task.print_stack(limit=12, file=stream)
        log.warning("task stack", task=task.get_name(), stack=stream.getvalue())


async def run_worker(settings: Settings, concurrency: int | None = None, burst: bool = False) -> None:
    """Run a worker until SIGTERM or Ctrl-C (graceful, then at once), or with `burst` until nothing is left to run."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR2, dump_tasks)
    worker = build_worker(settings, concurrency)
    stop = GracefulStop(worker, settings.shutdown_grace)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.request)
    main = asyncio.create_task(worker.async_run())
    stopper = asyncio.create_task(stop.requested.wait())
    waiting: set[asyncio.Task[Any]] = {main, stopper}
    if burst:
        waiting.add(asyncio.create_task(_wait_until_idle(worker, worker.ctx)))
    try:
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if stopper in done:
            await stop.drain()
        if main in done:
            main.result()  # the worker's own failure: Redis, Postgres or the key at its start
    finally:
        for task in waiting:
            task.cancel()
        for task in waiting:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await close_worker(worker)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):
            loop.remove_signal_handler(sig)
