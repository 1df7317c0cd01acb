"""The work the Python front runs on its portal: take data in, work a batch here, read its answers back."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.cli.progress import finished, needs_action
from jobs.cli.working import Ended, work_batch
from jobs.core.errors import Interrupted, NeedsPerson, ServiceUnavailable
from jobs.core.settings import Settings
from jobs.core.states import BatchStatus
from jobs.formats.reader import Source
from jobs.formats.tables import write_records
from jobs.library.answers import AnswerColumns
from jobs.library.portal import StopSwitch
from jobs.library.session import Session
from jobs.library.views import SnapshotBox
from jobs.observation.standing import BatchSummary, batch_summary
from jobs.operations.results import AnswerRow, answer_rows, export_in_order
from jobs.operations.votes import VOTE_EXTRAS, vote_models
from jobs.submission.estimate import Estimate
from jobs.submission.intake import FirstWindow, Intake, ModelRefused, Setback, estimate_source, take_in
from jobs.submission.model_names import renamed_note
from jobs.submission.submit import SubmitError, SubmitOptions

__all__ = [
    "Taken",
    "estimate_here",
    "read_answers",
    "record_rows",
    "spool_folder",
    "summary_of",
    "take",
    "work_here",
    "write_answers",
]


@dataclass(slots=True, frozen=True)
class Taken:
    """A batch the data went into (made now or found again), and whether its calls are simulated."""

    batch_id: str
    reused: bool
    simulated: bool
    summary: BatchSummary
    invalid: int
    # The call started the session's simulator for it (`simulator=True`): its workers call that one.
    simulator: bool


def _warner(err: Console) -> Any:
    def warn(setback: Setback) -> None:
        if setback.stage == "catalogue":
            err.print(
                f"warning: could not read OpenRouter's model list ({type(setback.error).__name__}); "
                "model ids are not checked before submitting",
                highlight=False,
            )
        else:
            err.print(
                f"warning: stored {setback.batch_id} but could not reach Redis ({setback.error}); its requests "
                "are queued as soon as a worker can reach it",
                highlight=False,
            )

    return warn


def _refused(exc: SubmitError) -> SubmitError:
    """A Python caller sees the message, not the CLI's list under it: the first bad rows go in it."""
    first = "; ".join(str(e) for e in exc.errors[:3])
    # The CLI's option is the front's keyword here.
    reason = exc.reason.replace("--skip-invalid", "skip_invalid=True")
    return SubmitError(exc.path, exc.errors, exc.invalid, reason=f"{reason}: {first}")


async def estimate_here(
    session: Session,
    source: Source,
    options: SubmitOptions,
    *,
    simulator: bool,
    check_models: bool,
    err: Console,
) -> Estimate:
    """What `take` would store, estimated through the intake and stored nowhere (the same errors)."""
    settings, engine = await session.settings(simulator, err)
    options = replace(options, simulated=True) if simulator else options
    try:
        return await estimate_source(
            engine, settings, source, options, check_models=check_models, warn=_warner(err)
        )
    except ModelRefused as exc:
        raise SubmitError(source.where, [], 0, reason=f"models=: {exc.problem}") from None
    except SubmitError as exc:
        if not exc.errors:
            raise
        raise _refused(exc) from None


async def take(
    session: Session,
    source: Source,
    options: SubmitOptions,
    *,
    simulator: bool,
    check_models: bool,
    queue: bool,
    err: Console,
    switch: StopSwitch | None = None,
) -> Taken:
    """Store the source as a batch (or find the one it already is); with `queue`, queue its first window for
    the fleet's workers (a `submit`), else leave it for the caller to work here (a `run`)."""
    if switch is not None:
        switch.bind_task()
    settings, engine = await session.settings(simulator, err)
    options = replace(options, simulated=True) if simulator else options
    try:
        taken: Intake = await take_in(
            engine,
            settings,
            source,
            options,
            check_models=check_models,
            first_window=FirstWindow(settings.redis_url) if queue else None,
            warn=_warner(err),
        )
    except ModelRefused as exc:
        raise SubmitError(source.where, [], 0, reason=f"models=: {exc.problem}") from None
    except SubmitError as exc:
        if not exc.errors:
            raise
        raise _refused(exc) from None
    report = taken.report
    async with engine.connect() as conn:
        summary = await batch_summary(conn, report.batch_id)
    if report.reused:
        err.print(
            f"{source.name} was already submitted with these options as {report.batch_id}; carrying on with it "
            "(new=True for a new batch)",
            highlight=False,
        )
    elif report.renamed:
        err.print(renamed_note(report.renamed), highlight=False)
    return Taken(report.batch_id, report.reused, taken.options.simulated, summary, report.invalid, simulator)


async def summary_of(engine: AsyncEngine, batch_id: str) -> BatchSummary:
    """The batch's summary now."""
    async with engine.connect() as conn:
        return await batch_summary(conn, batch_id)


async def work_here(
    session: Session,
    first: BatchSummary,
    *,
    reused: bool,
    simulator: bool,
    concurrency: int | None,
    box: SnapshotBox,
    switch: StopSwitch,
    err: Console,
) -> BatchSummary:
    """Work the batch in this process until it ends; raises Interrupted, NeedsPerson or ServiceUnavailable
    when it stops before, saying what is kept and how to carry on."""
    switch.bind_task()
    settings, engine = await session.settings(simulator, err)
    if finished(first):
        return first
    local = session.local
    ended: Ended = await work_batch(
        settings,
        engine,
        first,
        reused=reused,
        simulated=first.simulated,
        concurrency=concurrency,
        view=box,
        err=err,
        services=None if local is None else local.local,
        stop_hook=switch.hook,
        second_stop="interrupt again",
    )
    return _outcome(ended)


def _outcome(ended: Ended) -> BatchSummary:
    summary = ended.summary
    if ended.lost is not None:
        raise ServiceUnavailable(
            f"{ended.lost}; {summary.id} stopped: what finished is stored, and the same call again carries on "
            "with the rest"
        )
    if ended.interrupted and not finished(summary) and not needs_action(summary):
        raise Interrupted(
            f"interrupted: {summary.id} is kept and waits for this call (no other worker takes it up); the same "
            f"call again carries on with it (answered rows are not called again), or "
            f"orbatch.batch({summary.id!r}).results() gives what finished"
        )
    if needs_action(summary):
        what = "cancelled" if summary.status == BatchStatus.CANCELLED else f"paused ({summary.pause_reason})"
        raise NeedsPerson(
            f"{summary.id} {what}: {summary.pause_message or 'it will not move until a person acts'}; "
            f"orbatch.batch({summary.id!r}).results() gives what finished"
        )
    return summary


async def read_answers(
    engine: AsyncEngine, batch_id: str, columns: AnswerColumns, rows: int | None
) -> AnswerColumns:
    """The batch's answers as columns, one value per input row in order (rows left out at submit say so); a
    vote's agreement, ties and answers in columns of their own."""
    if await vote_models(engine, batch_id) is not None:
        columns.extend(VOTE_EXTRAS)
    async for chunk in _aligned(answer_rows(engine, batch_id), rows):
        columns.add(chunk)
    return columns


async def _aligned(
    chunks: AsyncIterator[list[AnswerRow]], rows: int | None
) -> AsyncIterator[list[AnswerRow]]:
    """Rows for every line: a line that was left out at submit (a bad record, `skip_invalid`) says so."""
    expected = 1
    async for chunk in chunks:
        out: list[AnswerRow] = []
        for row in chunk:
            while expected < row.line_no:
                out.append(_left_out(expected))
                expected += 1
            out.append(row)
            expected = row.line_no + 1
        yield out
    if rows is not None and expected <= rows:
        yield [_left_out(n) for n in range(expected, rows + 1)]


def _left_out(line_no: int) -> AnswerRow:
    return AnswerRow(
        line_no, "invalid", None, False, "invalid_record: the row was left out at submit (skip_invalid)"
    )


async def record_rows(
    engine: AsyncEngine, batch_id: str, schema: dict[str, Any] | None
) -> AsyncIterator[list[dict[str, Any]]]:
    """Every row of the batch in line order as its stored record with the answer's fields and `error`; the
    answer fields that clash with the records' own (as the first rows have them) are renamed alike throughout."""
    plan: AnswerColumns | None = None
    async with contextlib.aclosing(answer_rows(engine, batch_id, with_records=True)) as rows:
        async for chunk in rows:
            if plan is None:
                keys: dict[str, None] = {}
                for row in chunk:
                    keys.update(dict.fromkeys(row.record or {}))
                plan = AnswerColumns.plan(schema, keys)
                if await vote_models(engine, batch_id) is not None:
                    plan.extend(VOTE_EXTRAS)
            yield [{**(row.record or {}), **plan.fields_of(row)} for row in chunk]


async def write_answers(
    engine: AsyncEngine, batch_id: str, path: Path, schema: dict[str, Any] | None, records: bool
) -> int:
    """Write every row of the batch to `path` in line order: its record with the answer's fields (a batch of
    records, in the format the path's suffix names), or OpenAI Batch lines (a batch of chat requests)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not records:
        with path.open("wb") as out:
            report = await export_in_order(engine, batch_id, out)
        return report.completed + report.failed
    return await write_records(path, lambda: record_rows(engine, batch_id, schema))


def spool_folder(settings: Settings) -> Path:
    """Where the front spools a table's records before they go in."""
    return settings.data_dir / "spool"
