"""The commands on batches: submit, status (and --watch), results, usage, resume, cancel, priority, retry,
delete."""

from __future__ import annotations

import asyncio
import functools
import signal
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.cli.context import (
    BatchId,
    Format,
    connect_in_use,
    print_json,
    redis_in_use,
    resolve,
    services,
    where_redis,
)
from jobs.cli.options import DryRun, InputFile, SubmitChoices, parse_usd, with_submit_choices
from jobs.cli.progress import (
    ProgressView,
    exit_status,
    finished,
    needs_action,
    read_fleet,
    watch,
    with_skipped_lines,
)
from jobs.cli.taking import estimate_command, take_in_file
from jobs.cli.terminal import (
    batches_table,
    err,
    estimated_table,
    out,
    say,
    say_warning,
    summary_table,
    usage_table,
)
from jobs.core.errors import BadInput, Interrupted
from jobs.core.settings import Settings, get_settings
from jobs.core.states import BatchPriority, BatchStatus, PauseReason, RequestStatus
from jobs.observation.schedule_view import read_competition, read_later
from jobs.observation.standing import BatchSummary, batch_summary, list_batches
from jobs.observation.usage import UsageLine, UsageReport, quota_spenders, usage_report
from jobs.operations.control import cancel_batch, change_priority, delete_batch, resume_batch, retry_failed
from jobs.operations.results import STDOUT, check_destinations, destination, export_to_files
from jobs.scheduling.fleet import limits_key, read_breaker, throttle_namespace
from jobs.scheduling.roster import no_taker, read_heartbeats, takers

__all__ = ["cancel", "delete", "results", "resume", "retry", "set_priority", "status", "submit", "usage"]


async def _watch_batch(
    settings: Settings, engine: AsyncEngine, batch_id: str, view: ProgressView
) -> BatchSummary:
    """Watch a batch run by other workers until it finishes or stops; Ctrl-C ends the watch only."""
    redis = await connect_in_use(settings)
    async with engine.connect() as conn:
        simulated = (await batch_summary(conn, batch_id)).simulated
    # A simulated batch waits on the simulator's free tier, which its workers keep apart from OpenRouter's.
    limits = functools.partial(
        read_fleet, settings, redis, throttle_namespace(settings.queue_name, simulated), simulated
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        with view:
            summary = await watch(engine, batch_id, limits, view, stop)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        if redis is not None:
            await redis.aclose()
    if stop.is_set() and not finished(summary) and not needs_action(summary):
        raise Interrupted("stopped watching; the batch goes on (`orbatch status BATCH --watch`)")
    return summary


@with_submit_choices
def submit(
    file: InputFile,
    choices: SubmitChoices,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Wait (showing progress) until the batch is done; the exit status says how it ended.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    dry_run: DryRun = False,
) -> None:
    """Validate FILE and queue every line as one batch; prints the batch id (the existing one for a re-submit)."""
    settings = get_settings()
    options = choices.options(settings)
    if dry_run:
        estimate_command(settings, file, options, choices.check_models, as_json)
        return

    redis_url = redis_in_use(settings)

    async def go(engine: AsyncEngine) -> BatchSummary:
        _, summary = await take_in_file(
            engine, settings, file, options, choices.check_models, err, queue_on=redis_url
        )
        if summary.status == BatchStatus.IN_PROGRESS:
            waiting = await _waiting(settings, summary)
            if waiting is not None:
                say_warning(err, waiting)
        if not wait:
            return summary
        # The id first, so a script has it even while it waits.
        sys.stdout.write(summary.id + "\n")
        sys.stdout.flush()
        return await _watch_batch(settings, engine, summary.id, ProgressView(err, summary.id))

    with services(settings) as up:
        summary = up.run(go, pool_size=2)
    result = summary.to_json()
    if as_json:
        print_json(result)
    status = exit_status(summary) if wait else 0
    if not wait and not as_json:
        sys.stdout.write(result["id"] + "\n")
        if result["status"] == BatchStatus.IN_PROGRESS:
            say(err, f"submitted {result['request_counts']['total']} requests as {result['id']}")
    raise typer.Exit(with_skipped_lines(status, summary, err))


def status(
    batch: Annotated[str | None, typer.Argument(help="Batch id; omit to list recent batches.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON (with --watch: one object per line).")
    ] = False,
    watch_: Annotated[
        bool,
        typer.Option(
            "--watch",
            "-w",
            help="Follow the batch (run by any workers) until it is done: progress, rate, ETA, spend.",
        ),
    ] = False,
) -> None:
    """Show a batch's state, request counts, tokens and cost."""
    if watch_:
        if batch is None:
            raise BadInput("--watch follows one batch: `orbatch status BATCH --watch`")
        _watch_command(batch, as_json)
        return

    settings = get_settings()

    async def go(engine: AsyncEngine) -> tuple[list[BatchSummary], str | None]:
        async with engine.connect() as conn:
            found = (
                [await batch_summary(conn, await resolve(engine, batch))]
                if batch
                else await list_batches(conn)
            )
        waiting = None
        if batch and not finished(found[0]):
            waiting = await _waiting(settings, found[0])
        if batch and found[0].status == BatchStatus.IN_PROGRESS:
            async with engine.connect() as conn:
                turn = (await read_competition(conn, found[0].id, found[0].simulated)).says(
                    found[0].priority, found[0].counts.get(RequestStatus.RUNNING, 0)
                )
                later = (await read_later(conn, found[0].id)).says(datetime.now(UTC))
            waiting = "; ".join(filter(None, [waiting, turn, later]))
        if batch and found[0].pause_reason == PauseReason.QUOTA:
            spent = await _quota_spent_by(settings, engine, found[0].simulated)
            waiting = "; ".join(filter(None, [waiting, spent]))
        return found, waiting

    with services() as up:
        summaries, waiting = up.run(go)
    if as_json:
        print_json(
            {**summaries[0].to_json(), "waiting": waiting} if batch else [s.to_json() for s in summaries]
        )
    elif batch:
        out.print(summary_table(summaries[0], waiting))
    else:
        out.print(batches_table(summaries))


async def _waiting(settings: Settings, summary: BatchSummary) -> str | None:
    """What the batch waits for that Postgres does not say: the outage breaker, or no live worker that can
    take it up (read from the Redis in use); None when nothing, or when Redis cannot be read."""
    url = redis_in_use(settings)
    redis = await connect_in_use(settings)
    if redis is None:
        return None if url is not None else no_taker(summary.simulated, where_redis(None, settings))
    try:
        breaker = await read_breaker(redis, throttle_namespace(settings.queue_name, summary.simulated))
        beats = await read_heartbeats(redis, settings.queue_name)
    except (OSError, RedisError):
        return None
    finally:
        await redis.aclose()
    if breaker is not None:
        return breaker.describe()
    if summary.status == BatchStatus.IN_PROGRESS and not takers(
        beats, settings.queue_name, summary.id, summary.simulated
    ):
        return no_taker(summary.simulated, where_redis(url, settings))
    return None


async def _quota_spent_by(settings: Settings, engine: AsyncEngine, simulated: bool) -> str | None:
    """Which batches spent the free tier's current day, as the workers count days (a simulator's are short)."""
    day_seconds = settings.free_day_seconds
    redis = await connect_in_use(settings)
    if redis is not None:
        try:
            published = await redis.hget(
                limits_key(throttle_namespace(settings.queue_name, simulated)), "day_seconds"
            )  # type: ignore[misc]
            day_seconds = float(published or day_seconds)
        except (OSError, RedisError):
            pass
        finally:
            await redis.aclose()
    since = datetime.fromtimestamp(time.time() // day_seconds * day_seconds, UTC)
    async with engine.connect() as conn:
        spenders = await quota_spenders(conn, since, simulated)
    if not spenders:
        return None
    return "the free tier's day was spent by " + ", ".join(s.describe() for s in spenders)


async def _watch_resolved(settings: Settings, engine: AsyncEngine, ref: str, as_json: bool) -> BatchSummary:
    batch_id = await resolve(engine, ref)
    return await _watch_batch(settings, engine, batch_id, ProgressView(out, batch_id, as_json))


def _watch_command(batch: str, as_json: bool) -> None:
    settings = get_settings()
    with services(settings) as up:
        summary = up.run(lambda engine: _watch_resolved(settings, engine, batch, as_json))
    if out.is_terminal and not as_json:
        out.print(summary_table(summary))
    raise typer.Exit(exit_status(summary))


def results(
    batch: BatchId,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where to write the results (JSONL); `-` is stdout.")
    ] = STDOUT,
    errors: Annotated[
        Path | None,
        typer.Option(
            "--errors", help="Where to write the failures (JSONL); `-` is stdout, if the results are not."
        ),
    ] = None,
    fmt: Format = "batch",
    disagreements: Annotated[
        bool,
        typer.Option(
            "--disagreements",
            help="Of a --vote batch, only the records its models do not all agree on (as records), to review.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print counts as JSON (with -o FILE).")] = False,
) -> None:
    """Write a batch's results (OpenAI Batch output lines, or records with answers) to stdout or -o FILE;
    failures go to --errors. What was written is counted on stderr. A --vote batch's records come one per
    record, with the majority, the agreement and each model's answer."""
    check_destinations(output, errors)
    if as_json and STDOUT in (output, errors):
        what, fix = ("the results", "-o FILE") if output == STDOUT else ("the failures", "--errors FILE")
        raise BadInput(f"--json prints the counts on stdout, where {what} would go: give {fix}", param="json")

    async def go(engine: AsyncEngine) -> dict[str, Any]:
        async with engine.connect() as conn:
            summary = await batch_summary(conn, await resolve(engine, batch))
        report = await export_to_files(engine, summary.id, output, errors, fmt, disagreements)
        return {
            "id": summary.id,
            "status": summary.status,
            "completed": report.completed,
            "failed": report.failed,
            "cancelled": summary.counts.get(RequestStatus.CANCELLED, 0),
            "unfinished": summary.counts.get(RequestStatus.PENDING, 0)
            + summary.counts.get(RequestStatus.RUNNING, 0),
        }

    with services() as up:
        counts = up.run(go)
    if as_json:
        print_json(counts)
        return
    what = "records the models disagree on" if disagreements else "results"
    say(
        err,
        f"wrote {counts['completed']} {what} to {destination(output)}"
        + (
            f" and {counts['failed']} failures to {destination(errors)}"
            if errors
            else f" ({counts['failed']} failed)"
        )
        + (f"; {counts['cancelled']} requests were cancelled" if counts["cancelled"] else "")
        + (
            f"; {counts['unfinished']} requests are not finished yet"
            if counts["unfinished"]
            and counts["status"] not in (BatchStatus.CANCELLED, BatchStatus.CANCELLING)
            else ""
        ),
    )


def usage(
    batch: Annotated[str | None, typer.Argument(help="Batch id; omit for every batch.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Requests, calls, tokens and cost by batch and by the model that served, from every attempt."""

    async def go(engine: AsyncEngine) -> UsageReport:
        return await usage_report(engine, await resolve(engine, batch) if batch else None)

    with services() as up:
        report = up.run(go)
    if as_json:
        print_json(report.to_json())
        return
    out.print(usage_table(report))
    for batch_id, corrected in report.corrected.items():
        if corrected:
            noun = "answer" if corrected == 1 else "answers"
            say(out, f"{batch_id}: {corrected} {noun} needed a correction (a reply failed its schema first)")
    if batch is not None:
        for batch_id, estimate in report.estimates.items():
            out.print(estimated_table(batch_id, estimate, report.batches.get(batch_id, UsageLine())))
    if report.total.cost_estimated:
        say(err, "* cost estimated from the model's list prices: OpenRouter reported none for some calls")


def resume(
    batch: BatchId,
    max_cost: Annotated[
        str | None,
        typer.Option("--max-cost", help="A new spending cap (USD), for a batch stopped on its budget."),
    ] = None,
) -> None:
    """Run a paused batch again now (after fixing the key, adding credits, raising its budget, or early)."""
    cap: Decimal | None = parse_usd(max_cost, "--max-cost") if max_cost is not None else None

    async def go(engine: AsyncEngine) -> str:
        return await resume_batch(engine, await resolve(engine, batch), cap)

    with services() as up:
        state = up.run(go)
    say(err, f"{batch}: {state}")


def cancel(batch: BatchId) -> None:
    """Cancel a batch: no new call starts; calls in flight finish and are kept; results stay exportable."""

    async def go(engine: AsyncEngine) -> str:
        return await cancel_batch(engine, await resolve(engine, batch))

    with services() as up:
        state = up.run(go)
    say(err, f"{batch}: {state}")


def set_priority(
    batch: BatchId,
    level: Annotated[BatchPriority, typer.Argument(help="urgent, normal or background.", show_default=False)],
) -> None:
    """Change which batches run first: urgent before every normal batch, background after every normal one."""

    async def go(engine: AsyncEngine) -> tuple[str, str]:
        batch_id = await resolve(engine, batch)
        return batch_id, await change_priority(engine, batch_id, level)

    with services() as up:
        batch_id, said = up.run(go)
    say(err, f"{batch_id}: {said}")


def retry(
    batch: BatchId,
    failed: Annotated[
        bool, typer.Option("--failed", help="The failed requests (what retry does; kept for scripts).")
    ] = True,
) -> None:
    """Run a batch's failed requests again, each with its full number of attempts."""

    async def go(engine: AsyncEngine) -> tuple[str, int]:
        batch_id = await resolve(engine, batch)
        return batch_id, await retry_failed(engine, batch_id)

    with services() as up:
        batch_id, count = up.run(go)
    say(err, f"{batch_id}: {count} failed requests queued again")


def delete(
    batch: BatchId,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Delete a finished batch and all its rows (requests, attempts, results): for data retention.

    A batch with calls running is refused: cancel it first.
    """

    async def go(engine: AsyncEngine) -> tuple[str, int]:
        batch_id = await resolve(engine, batch)
        if not yes and sys.stdin.isatty() and not typer.confirm(f"Delete {batch_id} and all its rows?"):
            raise Interrupted("nothing deleted")
        return batch_id, await delete_batch(engine, batch_id)

    with services() as up:
        batch_id, total = up.run(go)
    say(err, f"deleted {batch_id} and its {total} requests")
