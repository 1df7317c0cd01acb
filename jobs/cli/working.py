"""One batch worked to its end in this process: its own queue, an in-process worker, progress, a graceful stop.

`orbatch run` and the Python front (`orbatch.run`) both work a batch this way; they differ in where the batch
comes from, how progress is shown and how a stop is asked for (signals, or a notebook's interrupt).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

from arq.connections import ArqRedis
from rich.console import Console
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.cli.progress import BatchView, FleetReading, read_fleet, watch
from jobs.cli.terminal import say, say_error
from jobs.core.constants import REDIS_SPARE_SECONDS
from jobs.core.settings import Settings
from jobs.core.states import BatchStatus, PauseReason
from jobs.observation.standing import BatchSummary, batch_summary
from jobs.operations.control import hold_for_its_run, release_batch_queue_marks, resume_batch
from jobs.scheduling.fleet import throttle_namespace
from jobs.scheduling.queue import connect, drop_queue
from jobs.services.embedded import LocalServices
from jobs.services.service_watch import ServiceWatch
from worker.plan import WorkerPlan
from worker.shutdown import GracefulStop

__all__ = ["Ended", "StopHook", "on_signals", "spare", "work_batch"]

# How a stop reaches the worker while it works: the hook is entered with the worker's GracefulStop, whose
# `request()` it calls once for a graceful stop and again to stop now, and left when the work ends.
StopHook = Callable[[GracefulStop], AbstractContextManager[None]]


@dataclass(slots=True, frozen=True)
class Ended:
    """How the work ended: the last summary, whether a stop was asked for, which service was lost."""

    summary: BatchSummary
    interrupted: bool
    lost: str | None = None


@contextlib.contextmanager
def on_signals(stop: GracefulStop) -> Iterator[None]:
    """SIGINT and SIGTERM ask `stop` (a terminal's Ctrl-C reaches the whole process group); SIGUSR2 logs where
    each task waits, the README's advice for a run that seems stuck."""
    from worker.runner import dump_tasks

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.request)
    loop.add_signal_handler(signal.SIGUSR2, dump_tasks)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):
            loop.remove_signal_handler(sig)


async def spare(step: Awaitable[object]) -> None:
    """A Redis step at the end of a run, which need not wait on a Redis that no longer answers."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(REDIS_SPARE_SECONDS):
            await step


async def _release_queue(engine: AsyncEngine, redis: ArqRedis, work: WorkerPlan, batch_id: str) -> None:
    """The run's own queue goes with it: its jobs are dropped and their requests marked unqueued, for others."""
    await spare(drop_queue(redis, work.queue))
    with contextlib.suppress(OSError, DBAPIError):
        await release_batch_queue_marks(engine, batch_id)


async def _latest(engine: AsyncEngine, batch_id: str, fallback: BatchSummary) -> BatchSummary:
    """The batch's summary now, or the last one read when Postgres cannot say."""
    try:
        async with engine.connect() as conn:
            return await batch_summary(conn, batch_id)
    except (OSError, DBAPIError):
        return fallback


async def work_batch(
    settings: Settings,
    engine: AsyncEngine,
    first: BatchSummary,
    *,
    reused: bool,
    simulated: bool,
    concurrency: int | None,
    view: BatchView,
    err: Console,
    services: LocalServices | None = None,
    stop_hook: StopHook = on_signals,
    second_stop: str = "Ctrl-C again",
) -> Ended:
    """Work the batch `first` describes here until it ends, a stop is asked for, or a service is lost.

    `reused`: the batch was found again (the same data and options), so a pause for the key, the credits or an
    interrupted run is lifted, as running it again is how a user says the cause is fixed. What is left when the
    work stops early waits for this run (paused `interrupted`): no other worker takes it up meanwhile.
    """
    batch_id = first.id
    # Requests queued elsewhere before (a `submit`) are fed again to this run's own queue.
    await release_batch_queue_marks(engine, batch_id)
    if reused and first.status == BatchStatus.PAUSED and first.pause_reason != PauseReason.BUDGET:
        # If the cause is not fixed, the first call parks the batch again and says so once.
        say(err, f"{batch_id} was paused ({first.pause_reason}); resuming it")
        await resume_batch(engine, batch_id, None)
    async with contextlib.AsyncExitStack() as stack:
        redis = await connect(settings.redis_url, settings.queue_name, patient=False)
        stack.push_async_callback(spare, redis.aclose())
        namespace = throttle_namespace(settings.queue_name, simulated)
        limits = functools.partial(read_fleet, settings, redis, namespace, simulated)
        # The run works its own batch only, from a queue of its own; workers sharing this Redis may still help
        # it through theirs, while other unfinished batches stay as they are until run or worked.
        work = WorkerPlan(queue=f"{settings.queue_name}:run:{batch_id}", only_batch=batch_id)
        stack.push_async_callback(_release_queue, engine, redis, work, batch_id)
        watch_services = ServiceWatch(engine, settings.redis_url, services, settings.service_lost_seconds)
        ended = await _work(
            settings,
            engine,
            work,
            concurrency,
            limits,
            view,
            err,
            watch_services,
            first,
            stop_hook,
            second_stop,
        )
        if ended.interrupted or ended.lost is not None:
            with contextlib.suppress(OSError, DBAPIError):
                await hold_for_its_run(engine, batch_id)
        return ended


async def _work(
    settings: Settings,
    engine: AsyncEngine,
    work: WorkerPlan,
    concurrency: int | None,
    limits: Callable[[], Awaitable[FleetReading]],
    view: BatchView,
    err: Console,
    services: ServiceWatch,
    first: BatchSummary,
    stop_hook: StopHook,
    second_stop: str,
) -> Ended:
    """Run an arq worker in this process while showing progress, until the batch is done, a stop, or a
    service is lost.

    The first stop (Ctrl-C, SIGTERM, a notebook's interrupt) stops new calls and lets those in flight end, so
    they are paid once and recorded; a second stops at once, giving them back. A lost service stops the run as
    a first stop does.
    """
    from worker.runner import build_worker
    from worker.shutdown import close_worker

    batch_id = work.only_batch
    assert batch_id is not None
    worker = build_worker(settings, concurrency, work)
    stop = GracefulStop(worker, settings.shutdown_grace)
    main = asyncio.create_task(worker.async_run())
    lost_task = asyncio.create_task(services.lost())
    lost: str | None = None
    # The hook stays in place to the end: a second stop while calls drain, or while the worker closes, stops
    # at once instead of reaching the code as an exception.
    with stop_hook(stop):
        try:
            with view:
                watcher = asyncio.create_task(
                    watch(engine, batch_id, limits, view, stop.requested, patient=True)
                )
                done, _ = await asyncio.wait({main, watcher, lost_task}, return_when=asyncio.FIRST_COMPLETED)
                if lost_task in done:
                    lost = lost_task.result()
                    stop.request()
                    if services.nothing_can_be_recorded():
                        # Nothing can be recorded any more, and a dead embedded Postgres does not come back by
                        # itself: waiting for the calls in flight would only delay the error.
                        stop.request()
                    watcher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watcher
                    summary = view.last_summary or first
                elif main in done and watcher not in done:
                    watcher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watcher
                    main.result()  # the worker's own error: Redis, Postgres or the key at its start
                    raise RuntimeError("the in-process worker stopped before the batch was done")
                else:
                    summary = watcher.result()
            if lost is not None:
                say_error(err, f"{lost}; stopping: calls in flight finish and are recorded first")
            if stop.requested.is_set():
                in_flight = sum(not t.done() for t in worker.tasks.values())
                if in_flight and lost is None:
                    say(
                        err, f"stopping: {in_flight} calls in flight finish first ({second_stop} to stop now)"
                    )
                # The hook stays in place: a second stop while calls drain stops at once.
                await stop.drain()
            summary = await _latest(engine, batch_id, summary)
            return Ended(summary, stop.requested.is_set() and lost is None, lost)
        finally:
            lost_task.cancel()
            main.cancel()
            for task in (lost_task, main):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await close_worker(worker)
