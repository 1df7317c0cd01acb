"""`orbatch run`: one file start to finish in this process: submit, in-process worker, progress, export."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from sqlalchemy.exc import DBAPIError

from jobs.cli.context import Format, logs_for_people, services
from jobs.cli.options import DryRun, InputFile, SubmitChoices, with_submit_choices
from jobs.cli.progress import ProgressView, exit_status, finished, needs_action, with_skipped_lines
from jobs.cli.simulated import start_simulator
from jobs.cli.taking import estimate_file, show_estimate, take_in_file
from jobs.cli.terminal import err, say
from jobs.cli.working import work_batch
from jobs.core.constants import EXIT_INTERRUPTED
from jobs.core.db import create_engine, ensure_database, upgrade
from jobs.core.errors import Interrupted, ServiceUnavailable, SettingsError
from jobs.core.settings import Settings, get_settings
from jobs.core.states import BatchStatus, RequestStatus
from jobs.observation.standing import BatchSummary
from jobs.operations.results import (
    ExportFormat,
    ExportReport,
    check_destinations,
    destination,
    export_to_files,
)
from jobs.services.embedded import LocalServices
from jobs.submission.submit import SubmitOptions

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
    # Print the estimate and run nothing (`--dry-run`); `as_json` prints it as JSON.
    dry_run: bool = False
    as_json: bool = False


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
        if plan.dry_run:
            estimate = await estimate_file(engine, settings, plan.file, options, plan.check_models, err)
            show_estimate(estimate, plan.file, plan.as_json)
            return 0
        # The run queues the batch in a queue of its own, once its worker is up.
        taken, summary = await take_in_file(engine, settings, plan.file, options, plan.check_models, err)
        batch_id = taken.batch_id
        ended = await work_batch(
            settings,
            engine,
            summary,
            reused=taken.report.reused,
            simulated=plan.simulator,
            concurrency=plan.concurrency,
            view=ProgressView(err, batch_id),
            err=err,
            services=services,
        )
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
    dry_run: DryRun = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="With --dry-run: print the estimate as JSON.")
    ] = False,
) -> None:
    """Submit FILE, run it with a worker in this process showing progress, and write the results.

    Uses DATABASE_URL and REDIS_URL when set; otherwise starts an embedded Postgres (kept under
    ORBATCH_DATA_DIR between runs) and an embedded Redis, and stops them at the end. Running the same command
    again carries on with the same batch. Exit status: 0 all completed, 3 some requests failed, 4 the batch
    stopped (paused on its budget, credits or key; cancelled), 130 interrupted.
    """
    settings = get_settings()
    # A dry run calls nothing: it needs no key, as `submit` does not.
    if not use_simulator and not dry_run and not settings.openrouter_api_key:
        raise SettingsError(
            "OPENROUTER_API_KEY is not set: export your OpenRouter key, or try the pipeline without one "
            "against the local simulator with --simulator"
        )
    check_destinations(output, errors)
    options = choices.options(settings)
    plan = RunPlan(
        file, options, choices.check_models, output, errors, fmt, concurrency, use_simulator, dry_run, as_json
    )
    logs_for_people(settings)
    try:
        with services(settings, redis=True) as up:
            code = asyncio.run(run_file(up.settings, plan, err, up.local))
    except KeyboardInterrupt:
        # Before the batch was stored and watched (while starting services or submitting): nothing to keep.
        raise Interrupted("interrupted") from None
    raise typer.Exit(code)
