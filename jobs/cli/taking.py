"""A file taken in from the command line: the one intake, with a progress bar and what a terminal is told; or
estimated through it, stored nowhere (`estimate`, `submit --dry-run`, `run --dry-run`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.cli.context import print_json, services
from jobs.cli.options import UsageError
from jobs.cli.simulated import start_simulator
from jobs.cli.terminal import err as stderr
from jobs.cli.terminal import estimate_notes, estimate_table, out, say, say_warning
from jobs.core.settings import Settings
from jobs.core.states import Lane, RequestStatus
from jobs.formats.input_lines import LineError
from jobs.formats.reader import FileSource, Source
from jobs.formats.record_spool import SpooledRecords, spool_records
from jobs.formats.tables import read_records, table_format
from jobs.observation.standing import BatchSummary, batch_summary
from jobs.submission.estimate import Estimate
from jobs.submission.intake import (
    FirstWindow,
    Intake,
    ModelRefused,
    Setback,
    StoringView,
    estimate_source,
    take_in,
)
from jobs.submission.model_names import renamed_note
from jobs.submission.submit import ProgressFn, SubmitError, SubmitOptions

__all__ = ["estimate_command", "estimate_file", "show_estimate", "take_in_file"]


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


def _warner(err: Console) -> Callable[[Setback], None]:
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

    return warn


def _reading(file: Path, source: Source, err: Console, doing: str) -> StoringView:
    """The progress bar of a file going in (`doing`: what the command does with it), on a terminal."""

    @contextlib.contextmanager
    def storing() -> Iterator[ProgressFn]:
        if not err.is_terminal:
            # Off a terminal there is no bar: one line says what the command is doing while a big file goes in.
            say(err, f"{doing} {file}")
        with Progress(
            TextColumn(doing),
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=True,
            disable=not err.is_terminal,
        ) as progress:
            # One stat call; the file itself is read in blocking chunks by the intake, as COPY needs them.
            read = source.path if isinstance(source, SpooledRecords) else file
            task = progress.add_task(doing, total=read.stat().st_size)
            yield lambda pos: progress.update(task, completed=pos)

    return storing


def _say_skipped(err: Console, errors: Sequence[LineError | str], invalid: int) -> None:
    for error in errors:
        say(err, f"skipped {error}")
    if invalid > len(errors):
        say(err, f"skipped {invalid - len(errors)} more bad lines")


@contextlib.contextmanager
def _reading_file(file: Path, source: Source) -> Iterator[None]:
    """While the intake reads FILE: a refused chain said as the file's SubmitError, and a spooled records file
    removed whatever happens."""
    try:
        yield
    except ModelRefused as exc:
        raise SubmitError(str(file), [], 0, reason=f"--models: {exc.problem}") from None
    finally:
        if isinstance(source, SpooledRecords):
            source.close()


async def estimate_file(
    engine: AsyncEngine,
    settings: Settings,
    file: Path,
    options: SubmitOptions,
    check_models: bool,
    err: Console,
) -> Estimate:
    """What submitting FILE would store and cost, read and checked as `take_in_file` does (the same errors),
    and stored nowhere; setbacks are said on `err`."""
    source = _source(file, settings, options)
    with _reading_file(file, source):
        estimate = await estimate_source(
            engine,
            settings,
            source,
            options,
            check_models=check_models,
            storing=_reading(file, source, err, "reading"),
            warn=_warner(err),
        )
    _say_skipped(err, estimate.skipped, estimate.invalid)
    return estimate


def show_estimate(estimate: Estimate, file: Path, as_json: bool) -> None:
    """The estimate on stdout: one JSON object, or the table and what its numbers assume."""
    if as_json:
        print_json(estimate.to_json())
        return
    out.print(estimate_table(estimate, f"{file.name}: {estimate.requests:,} requests (nothing stored)"))
    for note in estimate_notes(estimate):
        say(out, note)


def estimate_command(
    settings: Settings,
    file: Path,
    options: SubmitOptions,
    check_models: bool,
    as_json: bool,
    simulator: bool = False,
) -> None:
    """`estimate` and `submit --dry-run`: FILE estimated under the options on the services in use, and shown;
    `simulator`: priced from a local simulator's catalogue (started for it), as `run --simulator` would run."""

    async def go(engine: AsyncEngine) -> Estimate:
        if not simulator:
            return await estimate_file(engine, settings, file, options, check_models, stderr)
        async with contextlib.AsyncExitStack() as stack:
            local = await start_simulator(settings, stack, stderr)
            return await estimate_file(
                engine, local, file, replace(options, simulated=True), check_models, stderr
            )

    with services(settings) as up:
        found = up.run(go, pool_size=2)
    show_estimate(found, file, as_json)


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
    source = _source(file, settings, options)
    with _reading_file(file, source):
        taken = await take_in(
            engine,
            settings,
            source,
            options,
            check_models=check_models,
            storing=_reading(file, source, err, "submitting"),
            first_window=None if queue_on is None else FirstWindow(queue_on),
            warn=_warner(err),
        )
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
        if report.renamed:
            say(err, renamed_note(report.renamed))
        _say_skipped(err, report.errors, report.invalid)
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
