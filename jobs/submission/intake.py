"""Taking a file in: check model ids, store the batch with a progress bar, queue its first window."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import httpx
from redis.exceptions import RedisError
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.cli.terminal import say, say_warning
from jobs.core.settings import Settings
from jobs.observation.standing import BatchSummary, batch_summary
from jobs.scheduling.feeder import feed
from jobs.scheduling.fleet import kind_queue
from jobs.scheduling.queue import connect
from jobs.submission.catalog import load_catalog, upstream_is_simulator
from jobs.submission.submit import SubmitError, SubmitOptions, SubmitReport, model_problem, submit_file

__all__ = ["take_in"]


async def _queue_first_window(
    engine: AsyncEngine, settings: Settings, batch_id: str, simulated: bool, err: Console
) -> None:
    """Queue the batch's first requests now, in its kind's queue, so workers start at once; Redis down only
    delays them."""
    try:
        redis = await connect(settings.redis_url, settings.queue_name, patient=False)
        try:
            queue = kind_queue(settings.queue_name, simulated)
            await feed(
                engine, redis, settings.queue_name, settings.feed_window, batch_id=batch_id, queue=queue
            )
        finally:
            await redis.aclose()
    except (OSError, RedisError) as exc:
        # Postgres holds the batch; any worker's feeder queues it once Redis is reachable.
        say_warning(
            err,
            f"stored {batch_id} but could not reach Redis at REDIS_URL ({exc}); "
            "its requests are queued as soon as a worker can reach it",
        )


async def take_in(
    engine: AsyncEngine,
    settings: Settings,
    file: Path,
    options: SubmitOptions,
    check_models: bool,
    err: Console,
    queue_now: bool = True,
) -> tuple[SubmitReport, BatchSummary]:
    """Submit FILE as a batch (or find the one it already is) and, with `queue_now`, queue its first window.

    Warnings go to `err`.
    """
    key = settings.openrouter_api_key.get_secret_value() if settings.openrouter_api_key else None
    if not options.simulated and await upstream_is_simulator(settings.openrouter_base_url, key):
        # Its calls will count against no real account, and a real run of the same file is another batch.
        options = replace(options, simulated=True)
    if check_models:
        try:
            known = frozenset(await load_catalog(engine, settings.openrouter_base_url, key))
            options = replace(options, known_models=known)
        except (httpx.HTTPError, OSError, ValueError) as exc:
            say_warning(
                err,
                f"could not read OpenRouter's model list ({type(exc).__name__}); "
                "model ids are not checked before submitting",
            )
    problem = model_problem(options.models, options)
    if problem:
        raise SubmitError(str(file), [], 0, reason=f"--models: {problem}")
    if not err.is_terminal:
        # Off a terminal there is no bar: one line says what the command is doing while a big file goes in.
        say(err, f"submitting {file}")
    with Progress(
        TextColumn("submitting"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as progress:
        # One stat call; the file itself is read in blocking chunks by submit_file, as COPY needs them.
        task = progress.add_task("submit", total=file.stat().st_size)  # noqa: ASYNC240
        report = await submit_file(engine, file, options, lambda pos: progress.update(task, completed=pos))
    if queue_now:
        await _queue_first_window(engine, settings, report.batch_id, options.simulated, err)
    async with engine.connect() as conn:
        summary = await batch_summary(conn, report.batch_id)
    if report.reused:
        say(
            err,
            f"{file} was already submitted with these options as {report.batch_id}; "
            "carrying on with it (pass --new for a new batch)",
        )
    if report.reused:
        # The lines were reported when the file was first submitted; this run stores nothing of it again.
        if report.invalid:
            say(
                err,
                f"{report.invalid} bad lines of {file} were left out when it was submitted (--skip-invalid)",
            )
    else:
        for error in report.errors:
            say(err, f"skipped {error}")
        if report.invalid > len(report.errors):
            say(err, f"skipped {report.invalid - len(report.errors)} more bad lines")
    return report, summary
