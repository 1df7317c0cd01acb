"""`orbatch run`: one file start to finish in this process: submit, in-process worker, progress, export."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import typer
from arq.connections import ArqRedis
from rich.console import Console
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.cli.context import Format, logs_for_people, services
from jobs.cli.options import InputFile, SubmitChoices, with_submit_choices
from jobs.cli.progress import (
    FleetReading,
    ProgressView,
    exit_status,
    finished,
    needs_action,
    read_fleet,
    watch,
    with_skipped_lines,
)
from jobs.cli.simulated import start_simulator
from jobs.cli.taking import take_in_file
from jobs.cli.terminal import err, say, say_error
from jobs.core.constants import EXIT_INTERRUPTED, REDIS_SPARE_SECONDS
from jobs.core.db import create_engine, ensure_database, upgrade
from jobs.core.errors import Interrupted, ServiceUnavailable, SettingsError
from jobs.core.settings import Settings, get_settings
from jobs.core.states import BatchStatus, PauseReason, RequestStatus
from jobs.observation.standing import BatchSummary, batch_summary
from jobs.operations.control import hold_for_its_run, release_batch_queue_marks, resume_batch
from jobs.operations.results import (
    ExportFormat,
    ExportReport,
    check_destinations,
    destination,
    export_to_files,
)
from jobs.scheduling.fleet import throttle_namespace
from jobs.scheduling.queue import connect, drop_queue
from jobs.services.embedded import LocalServices
from jobs.services.service_watch import ServiceWatch
from jobs.submission.submit import SubmitOptions
from worker.plan import WorkerPlan

__all__ = ["RunPlan", "run", "run_file"]


@dataclass(slots=True, frozen=True)
class RunPlan:
    """What `orbatch run` was asked to do."""

    file: Path
    options: SubmitOptions
    check_models: bool
    output: Path
    errors: Path | None
    fmt: ExportFormat
    concurrency: int | None
    simulator: bool


async def run_file(
    settings: Settings, plan: RunPlan, err: Console, services: LocalServices | None = None
) -> int:
    """Run the plan; returns the exit status (0 done, 3 some failed, 4 stopped, 130 interrupted).

    A service lost mid-run (an embedded one's process gone, or one silent for SERVICE_LOST_SECONDS) stops the
    run as a Ctrl-C does, writes what finished, and raises ServiceUnavailable saying which.
    """
    async with contextlib.AsyncExitStack() as stack:
        if plan.simulator:
            settings = await start_simulator(settings, stack, err)
        await ensure_database(settings.database_url)
        await upgrade(settings.database_url)
        engine = create_engine(settings.database_url, pool_size=2)
        stack.push_async_callback(engine.dispose)
        options = replace(plan.options, simulated=plan.simulator)
        # The run queues the batch in a queue of its own, once its worker is up.
        taken, summary = await take_in_file(engine, settings, plan.file, options, plan.check_models, err)
        report = taken.report
        batch_id = report.batch_id
        # Requests queued elsewhere before (a `submit`) are fed again to this run's own queue.
        await release_batch_queue_marks(engine, batch_id)
        if (
            report.reused
            and summary.status == BatchStatus.PAUSED
            and summary.pause_reason != PauseReason.BUDGET
        ):
            # Running the same file again is how a user says the key or the credits were fixed, or a new
            # quota has come: if it has not, the first call parks the batch again and says so once.
            say(err, f"{batch_id} was paused ({summary.pause_reason}); resuming it")
            await resume_batch(engine, batch_id, None)
        redis = await connect(settings.redis_url, settings.queue_name, patient=False)
        stack.push_async_callback(_spare, redis.aclose())
        namespace = throttle_namespace(settings.queue_name, plan.simulator)
        limits = functools.partial(read_fleet, settings, redis, namespace, plan.simulator)
        # The run works its own batch only, from a queue of its own; workers sharing this Redis may still help it
        # through theirs, while other unfinished batches stay as they are until run or worked.
        work = WorkerPlan(queue=f"{settings.queue_name}:run:{batch_id}", only_batch=batch_id)
        stack.push_async_callback(_release_queue, engine, redis, work, batch_id)
        watch_services = ServiceWatch(engine, settings.redis_url, services, settings.service_lost_seconds)
        ended = await _work(settings, plan, engine, work, limits, err, watch_services, summary)
        if ended.interrupted or ended.lost is not None:
            # What is left waits for this run: a server's or a fleet's worker does not take it up meanwhile.
            with contextlib.suppress(OSError, DBAPIError):
                await hold_for_its_run(engine, batch_id)
        try:
            exported = await export_to_files(engine, batch_id, plan.output, plan.errors, plan.fmt)
        except (OSError, DBAPIError) as exc:
            if ended.lost is None:
                raise
            raise ServiceUnavailable(
                f"{ended.lost}; the run stopped and could not write its results ({type(exc).__name__}). "
                "Nothing stored is lost: run the same command again once the service is back"
            ) from None
    summary = ended.summary
    _report(summary, exported, plan, err)
    if ended.lost is not None:
        raise ServiceUnavailable(
            f"{ended.lost}; the run stopped: the results of what finished are written, and running the same "
            "command again carries on with the rest"
        )
    if ended.interrupted and not finished(summary) and not needs_action(summary):
        say(
            err,
            f"interrupted: {batch_id} is kept and waits for this run (no other worker takes it up); run the "
            "same command again to carry on with it, or `orbatch resume` it for any worker",
        )
        return EXIT_INTERRUPTED
    return with_skipped_lines(exit_status(summary), summary, err)


async def _spare(step: Awaitable[object]) -> None:
    """A Redis step at the end of a run, which need not wait on a Redis that no longer answers."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(REDIS_SPARE_SECONDS):
            await step


async def _release_queue(engine: AsyncEngine, redis: ArqRedis, work: WorkerPlan, batch_id: str) -> None:
    """The run's own queue goes with it: its jobs are dropped and their requests marked unqueued, for others."""
    await _spare(drop_queue(redis, work.queue))
    with contextlib.suppress(OSError, DBAPIError):
        await release_batch_queue_marks(engine, batch_id)


@dataclass(slots=True, frozen=True)
class _Ended:
    """How the run's work ended: the last summary, whether a stop was asked for, which service was lost."""

    summary: BatchSummary
    interrupted: bool
    lost: str | None = None


async def _latest(engine: AsyncEngine, batch_id: str, fallback: BatchSummary) -> BatchSummary:
    """The batch's summary now, or the last one read when Postgres cannot say."""
    try:
        async with engine.connect() as conn:
            return await batch_summary(conn, batch_id)
    except (OSError, DBAPIError):
        return fallback


async def _work(
    settings: Settings,
    plan: RunPlan,
    engine: AsyncEngine,
    work: WorkerPlan,
    limits: Callable[[], Awaitable[FleetReading]],
    err: Console,
    services: ServiceWatch,
    first: BatchSummary,
) -> _Ended:
    """Run an arq worker in this process while showing progress, until the batch is done, Ctrl-C, or a
    service is lost.

    The first Ctrl-C (or SIGTERM) stops new calls and lets those in flight end, so they are paid once and
    recorded; a second stops at once, giving them back. A lost service stops the run as a first Ctrl-C does.
    """
    from worker.runner import build_worker, dump_tasks
    from worker.shutdown import GracefulStop, close_worker

    batch_id = work.only_batch
    assert batch_id is not None
    worker = build_worker(settings, plan.concurrency, work)
    stop = GracefulStop(worker, settings.shutdown_grace)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.request)
    # The README's advice for a run that seems stuck: it says where each task waits, and the run goes on.
    loop.add_signal_handler(signal.SIGUSR2, dump_tasks)
    main = asyncio.create_task(worker.async_run())
    lost_task = asyncio.create_task(services.lost())
    lost: str | None = None
    try:
        with ProgressView(err, batch_id) as view:
            watcher = asyncio.create_task(watch(engine, batch_id, limits, view, stop.requested, patient=True))
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
                say(err, f"stopping: {in_flight} calls in flight finish first (Ctrl-C again to stop now)")
            await stop.drain()
        summary = await _latest(engine, batch_id, summary)
        return _Ended(summary, stop.requested.is_set() and lost is None, lost)
    finally:
        lost_task.cancel()
        main.cancel()
        for task in (lost_task, main):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await close_worker(worker)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):
            loop.remove_signal_handler(sig)


def _report(summary: BatchSummary, exported: ExportReport, plan: RunPlan, err: Console) -> None:
    counts = summary.counts
    line = (
        f"{summary.id}: {summary.status}; {exported.completed} results written to {destination(plan.output)}"
    )
    if exported.failed:
        line += (
            f", {exported.failed} failures to {destination(plan.errors)}"
            if plan.errors
            else f"; {exported.failed} requests failed (--errors FILE writes them)"
        )
    unfinished = counts.get(RequestStatus.PENDING, 0) + counts.get(RequestStatus.RUNNING, 0)
    if unfinished:
        line += f"; {unfinished} not finished yet"
    line += f"; cost ${summary.cost:.6f}"
    say(err, line)
    if needs_action(summary) and summary.status == BatchStatus.PAUSED:
        say(err, f"paused ({summary.pause_reason}): {summary.pause_message}")


@with_submit_choices
def run(
    file: InputFile,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write the results (JSONL); `-` is stdout.")
    ],
    errors: Annotated[
        Path | None,
        typer.Option(
            "--errors", help="Where to write the failures (JSONL); `-` is stdout, if the results are not."
        ),
    ] = None,
    fmt: Format = "batch",
    *,
    choices: SubmitChoices,
    concurrency: Annotated[
        int | None, typer.Option(min=1, max=4096, help="Requests run at once by the in-process worker.")
    ] = None,
    use_simulator: Annotated[
        bool,
        typer.Option(
            "--simulator",
            help="Call a local OpenRouter simulator instead of OpenRouter: no key, no quota, no real model "
            "(its options: ORBATCH_SIMULATOR_ARGS, as `orbatch simulator` takes them).",
        ),
    ] = False,
) -> None:
    """Submit FILE, run it with a worker in this process showing progress, and write the results.

    Uses DATABASE_URL and REDIS_URL when set; otherwise starts an embedded Postgres (kept under
    ORBATCH_DATA_DIR between runs) and an embedded Redis, and stops them at the end. Running the same command
    again carries on with the same batch. Exit status: 0 all completed, 3 some requests failed, 4 the batch
    stopped (paused on its budget, credits or key; cancelled), 130 interrupted.
    """
    settings = get_settings()
    if not use_simulator and not settings.openrouter_api_key:
        raise SettingsError(
            "OPENROUTER_API_KEY is not set: export your OpenRouter key, or try the pipeline without one "
            "against the local simulator with --simulator"
        )
    check_destinations(output, errors)
    options = choices.options(settings)
    plan = RunPlan(file, options, choices.check_models, output, errors, fmt, concurrency, use_simulator)
    logs_for_people(settings)
    try:
        with services(settings, redis=True) as up:
            code = asyncio.run(run_file(up.settings, plan, err, up.local))
    except KeyboardInterrupt:
        # Before the batch was stored and watched (while starting services or submitting): nothing to keep.
        raise Interrupted("interrupted") from None
    raise typer.Exit(code)
