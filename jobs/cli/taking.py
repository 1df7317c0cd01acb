"""A file taken in from the command line: the one intake, with a progress bar and what a terminal is told."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.cli.options import UsageError
from jobs.cli.terminal import say, say_warning
from jobs.core.settings import Settings
from jobs.core.states import Lane, RequestStatus
from jobs.formats.reader import FileSource, Source
from jobs.formats.record_spool import SpooledRecords, spool_records
from jobs.formats.tables import read_records, table_format
from jobs.observation.standing import BatchSummary, batch_summary
from jobs.submission.intake import FirstWindow, Intake, ModelRefused, Setback, take_in
from jobs.submission.submit import ProgressFn, SubmitError, SubmitOptions

__all__ = ["take_in_file"]


def _source(file: Path, settings: Settings, options: SubmitOptions) -> Source:
    """The file as the intake reads it: JSONL as it is; a .csv or .parquet table's rows as JSON records."""
    kind = table_format(file)
    if kind not in ("csv", "parquet"):
        return FileSource.open(file)
    if options.template is None:
        raise UsageError(
            f"{file} is a table of records ({kind}): give --template (and --models) to make each row's prompt"
        )
    return spool_records(read_records(file), settings.data_dir / "spool", file.name, str(file))


async def take_in_file(
    engine: AsyncEngine,
    settings: Settings,
    file: Path,
    options: SubmitOptions,
    check_models: bool,
    err: Console,
    queue_on: str | None = None,
) -> tuple[Intake, BatchSummary]:
    """Submit FILE through the intake (or find the batch it already is) and, given the URL of a Redis
    `queue_on`, queue its first window there; setbacks, skipped lines and a re-submit are said on `err`."""

    def warn(setback: Setback) -> None:
        if setback.stage == "catalogue":
            say_warning(
                err,
                f"could not read OpenRouter's model list ({type(setback.error).__name__}); "
                "model ids are not checked before submitting",
            )
        else:
            say_warning(
                err,
                f"stored {setback.batch_id} but could not reach Redis at REDIS_URL ({setback.error}); "
                "its requests are queued as soon as a worker can reach it",
            )

    source = _source(file, settings, options)

    @contextlib.contextmanager
    def storing() -> Iterator[ProgressFn]:
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
            # One stat call; the file itself is read in blocking chunks by the intake, as COPY needs them.
            read = source.path if isinstance(source, SpooledRecords) else file
            task = progress.add_task("submit", total=read.stat().st_size)
            yield lambda pos: progress.update(task, completed=pos)

    try:
        taken = await take_in(
            engine,
            settings,
            source,
            options,
            check_models=check_models,
            storing=storing,
            first_window=None if queue_on is None else FirstWindow(queue_on),
            warn=warn,
        )
    except ModelRefused as exc:
        raise SubmitError(str(file), [], 0, reason=f"--models: {exc.problem}") from None
    finally:
        if isinstance(source, SpooledRecords):
            source.close()
    report = taken.report
    async with engine.connect() as conn:
        summary = await batch_summary(conn, report.batch_id)
    if report.reused:
        say(
            err,
            f"{file} was already submitted with these options as {report.batch_id}; "
            "carrying on with it (pass --new for a new batch)",
        )
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
        _say_lane(err, summary)
    return taken, summary


def _say_lane(err: Console, summary: BatchSummary) -> None:
    """Which of the batch's requests the batch lane took, when it was asked for."""
    if summary.lane == Lane.LIVE:
        return
    remote = summary.counts.get(RequestStatus.REMOTE, 0)
    if remote:
        live = summary.total - remote
        say(
            err,
            f"{remote} requests go through OpenRouter's Batch API (about half price; answered within minutes to "
            "24 h)" + (f"; {live} run live (their first model has no batch variant)" if live else ""),
        )
    else:
        say(
            err,
            "no request's first model has a batch variant in the catalogue (or it could not be read): every "
            "request runs live",
        )
