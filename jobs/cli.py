"""The `orbatch` command line: submit, run workers, watch, export and steer batches."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import sys
from collections.abc import Coroutine
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import orjson
import typer
from redis.exceptions import RedisError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.constants import EXIT_INTERRUPTED
from jobs.control import ResumeRefused, cancel_batch, resume_batch, retry_failed
from jobs.db import create_engine, ensure_database, upgrade
from jobs.embedded import EmbeddedError, local_services
from jobs.export import ExportFormat, export_to_files
from jobs.intake import take_in
from jobs.logs import configure_logging, redact
from jobs.oneshot import RunPlan, run_file
from jobs.options import (
    CheckModels,
    Dedupe,
    FreeOnly,
    InputFile,
    JsonSchema,
    MaxAttempts,
    MaxCost,
    Models,
    Name,
    New,
    SkipInvalid,
    System,
    TemplateText,
    UsageError,
    parse_usd,
    submit_options,
)
from jobs.progress import ProgressView, exit_status, finished, free_limits, needs_action, watch
from jobs.queue import connect
from jobs.settings import Settings, get_settings
from jobs.status import BatchNotFound, BatchSummary, batch_summary, list_batches
from jobs.submit import SubmitError, SubmitOptions
from jobs.templates import TemplateError
from jobs.usage import UsageLine, UsageReport, usage_report

__all__ = ["app", "main"]

T = TypeVar("T")

Format = Annotated[
    ExportFormat,
    typer.Option(
        "--format",
        "-f",
        help="batch: OpenAI Batch output lines. records: each input record with its answer merged in "
        "(the fields of a JSON answer, else `answer`).",
    ),
]

app = typer.Typer(
    name="orbatch",
    help="Batch chat completions through OpenRouter: JSONL in, Postgres as the record, JSONL out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")

# soft_wrap: messages stay one line each when piped, whatever the width; piped tables get room for ids.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _fail(message: str, code: int = 1) -> NoReturn:
    # Messages carry user text and install hints such as `orbatch[local]`, which are not markup.
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def _usd(value: str, option: str) -> Decimal:
    try:
        return parse_usd(value, option)
    except UsageError as exc:
        _fail(str(exc), 2)


def _settings() -> Settings:
    try:
        return get_settings()
    except Exception as exc:  # pydantic's message names the variable that is wrong
        _fail(f"bad configuration in the environment: {exc}", 2)


@app.callback()
def _main(
    log_level: Annotated[str, typer.Option(envvar="ORBATCH_LOG_LEVEL", help="Log level.")] = "WARNING",
) -> None:
    settings = _settings()
    key = settings.openrouter_api_key.get_secret_value() if settings.openrouter_api_key else None
    configure_logging(log_level, secrets=[key] if key else [])


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Create the database if it is missing and apply the migrations (Alembic)."""
    settings = _settings()

    async def go() -> bool:
        created = await ensure_database(settings.database_url)
        await upgrade(settings.database_url, revision)
        return created

    try:
        created = _run(go())
    except OSError as exc:
        _fail(f"cannot reach Postgres at DATABASE_URL: {exc}")
    err.print(("Created the database; " if created else "") + f"schema at {revision}.")


def _print_summary(summary: BatchSummary) -> None:
    counts = summary.counts
    table = Table(
        title=f"batch {summary.id}" + (f" ({summary.name})" if summary.name else ""), show_header=False
    )
    table.add_column(style="bold")
    table.add_column()
    table.add_row("status", summary.status)
    if summary.pause_reason:
        when = f" until {summary.resume_at:%Y-%m-%d %H:%M:%S} UTC" if summary.resume_at else ""
        table.add_row("paused", f"{summary.pause_reason}{when}: {summary.pause_message or ''}")
    table.add_row("models", ", ".join(summary.models) or "(per line)")
    table.add_row(
        "requests",
        f"{summary.total} total · {counts.get('completed', 0)} completed · {counts.get('failed', 0)} failed · "
        f"{counts.get('pending', 0)} pending · {counts.get('running', 0)} running",
    )
    table.add_row("attempts", str(summary.attempts))
    table.add_row("tokens", f"{summary.prompt_tokens} prompt · {summary.completion_tokens} completion")
    table.add_row("cost", f"${summary.cost:.6f}")
    out.print(table)


def _options(**kwargs: Any) -> SubmitOptions:
    try:
        return submit_options(**kwargs)
    except (UsageError, TemplateError) as exc:
        _fail(str(exc), 2)


def _submit_failed(exc: SubmitError) -> NoReturn:
    for error in exc.errors:
        err.print(str(error), highlight=False, markup=False)
    if exc.invalid > len(exc.errors):
        err.print(f"... and {exc.invalid - len(exc.errors)} more bad lines", highlight=False)
    _fail(exc.reason, 2)


async def _watch_batch(
    settings: Settings, engine: AsyncEngine, batch_id: str, view: ProgressView
) -> BatchSummary:
    """Watch a batch run by other workers until it finishes or stops; Ctrl-C ends the watch only."""
    redis = await connect(settings.redis_url, settings.queue_name, patient=False)

    limits = functools.partial(free_limits, settings, redis)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    try:
        with view:
            summary = await watch(engine, batch_id, limits, view, stop)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        await redis.aclose()
    if stop.is_set() and not finished(summary) and not needs_action(summary):
        raise KeyboardInterrupt
    return summary


@app.command()
def submit(
    file: InputFile,
    models: Models = None,
    name: Name = None,
    max_attempts: MaxAttempts = None,
    free_only: FreeOnly = False,
    max_cost: MaxCost = None,
    skip_invalid: SkipInvalid = False,
    check_models: CheckModels = True,
    new: New = False,
    dedupe: Dedupe = False,
    template: TemplateText = None,
    system: System = None,
    json_schema: JsonSchema = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Wait (showing progress) until the batch is done; the exit status says how it ended.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Validate FILE and queue every line as one batch; prints the batch id (the existing one for a re-submit)."""
    settings = _settings()
    options = _options(
        models=models,
        name=name,
        max_attempts=max_attempts or settings.max_attempts,
        free_only=free_only,
        max_cost=max_cost,
        skip_invalid=skip_invalid,
        new=new,
        dedupe=dedupe,
        template=template,
        system=system,
        json_schema=json_schema,
    )

    async def go() -> BatchSummary:
        engine = create_engine(settings.database_url, pool_size=2)
        try:
            _, summary = await take_in(engine, settings, file, options, check_models, err)
            if not wait:
                return summary
            # The id first, so a script has it even while it waits.
            sys.stdout.write(summary.id + "\n")
            sys.stdout.flush()
            return await _watch_batch(settings, engine, summary.id, ProgressView(err, summary.id))
        finally:
            await engine.dispose()

    try:
        summary = _run(go())
    except SubmitError as exc:
        _submit_failed(exc)
    except KeyboardInterrupt:
        err.print("stopped waiting; the batch goes on (`orbatch status BATCH --watch`)", highlight=False)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    result = summary.to_json()
    if wait:
        if as_json:
            sys.stdout.write(orjson.dumps(result).decode() + "\n")
        raise typer.Exit(exit_status(summary))
    if as_json:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
    else:
        sys.stdout.write(result["id"] + "\n")
        if result["status"] == "in_progress":
            err.print(
                f"submitted {result['request_counts']['total']} requests as {result['id']}", highlight=False
            )


@app.command()
def run(
    file: InputFile,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the results (JSONL).")],
    errors: Annotated[
        Path | None, typer.Option("--errors", help="Where to write the failures (JSONL).")
    ] = None,
    fmt: Format = "batch",
    models: Models = None,
    name: Name = None,
    max_attempts: MaxAttempts = None,
    free_only: FreeOnly = False,
    max_cost: MaxCost = None,
    skip_invalid: SkipInvalid = False,
    check_models: CheckModels = True,
    new: New = False,
    dedupe: Dedupe = False,
    template: TemplateText = None,
    system: System = None,
    json_schema: JsonSchema = None,
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
    settings = _settings()
    if not use_simulator and not settings.openrouter_api_key:
        _fail(
            "OPENROUTER_API_KEY is not set: export your OpenRouter key, or try the pipeline without one "
            "against the local simulator with --simulator",
            2,
        )
    options = _options(
        models=models,
        name=name,
        max_attempts=max_attempts or settings.max_attempts,
        free_only=free_only,
        max_cost=max_cost,
        skip_invalid=skip_invalid,
        new=new,
        dedupe=dedupe,
        template=template,
        system=system,
        json_schema=json_schema,
    )
    plan = RunPlan(file, options, check_models, output, errors, fmt, concurrency, use_simulator)
    database_given, redis_given = settings.services_given()
    try:
        with local_services(
            settings.data_dir,
            settings.database_url if database_given else None,
            settings.redis_url if redis_given else None,
        ) as services:
            if services.started:
                err.print(
                    f"embedded {' and '.join(services.started)} (DATABASE_URL / REDIS_URL not set), "
                    f"data in {settings.data_dir}",
                    highlight=False,
                )
            local = settings.model_copy(
                update={"database_url": services.database_url, "redis_url": services.redis_url}
            )
            code = _run(run_file(local, plan, err))
    except KeyboardInterrupt:
        # Before the batch was stored and watched (while starting services or submitting): nothing to keep.
        err.print("interrupted", highlight=False)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except EmbeddedError as exc:
        _fail(str(exc))
    except SubmitError as exc:
        _submit_failed(exc)
    raise typer.Exit(code)


@app.command()
def worker(
    burst: Annotated[bool, typer.Option(help="Exit once no request is left to run now.")] = False,
    concurrency: Annotated[
        int | None, typer.Option(min=1, max=4096, help="Requests run at once by this process.")
    ] = None,
) -> None:
    """Run an arq worker that executes queued requests (and feeds the queue from Postgres)."""
    settings = _settings()
    try:
        settings.api_key()
    except RuntimeError as exc:
        _fail(f"{exc} (or point OPENROUTER_BASE_URL at `orbatch simulator` and set any key)", 2)
    from worker.runner import run_worker

    _run(run_worker(settings, concurrency, burst))


@app.command()
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
    settings = _settings()
    if watch_:
        if batch is None:
            _fail("--watch follows one batch: `orbatch status BATCH --watch`", 2)
        _watch_command(settings, batch, as_json)
        return

    async def go() -> list[BatchSummary]:
        engine = create_engine(settings.database_url, pool_size=1)
        try:
            async with engine.connect() as conn:
                return [await batch_summary(conn, batch)] if batch else await list_batches(conn)
        finally:
            await engine.dispose()

    try:
        summaries = _run(go())
    except BatchNotFound as exc:
        _fail(str(exc), 2)
    if as_json:
        payload: Any = summaries[0].to_json() if batch else [s.to_json() for s in summaries]
        sys.stdout.write(orjson.dumps(payload).decode() + "\n")
        return
    if batch:
        _print_summary(summaries[0])
        return
    table = Table("id", "name", "status", "total", "completed", "failed", "cost")
    for s in summaries:
        table.add_row(
            s.id,
            s.name or "",
            s.status,
            str(s.total),
            str(s.counts.get("completed", 0)),
            str(s.counts.get("failed", 0)),
            f"${s.cost:.6f}",
        )
    out.print(table)


def _watch_command(settings: Settings, batch: str, as_json: bool) -> NoReturn:
    async def go() -> BatchSummary:
        engine = create_engine(settings.database_url, pool_size=1)
        try:
            return await _watch_batch(settings, engine, batch, ProgressView(out, batch, as_json))
        finally:
            await engine.dispose()

    try:
        summary = _run(go())
    except BatchNotFound as exc:
        _fail(str(exc), 2)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if not out.is_terminal or as_json:
        raise typer.Exit(exit_status(summary))
    _print_summary(summary)
    raise typer.Exit(exit_status(summary))


@app.command()
def results(
    batch: Annotated[str, typer.Argument(help="Batch id.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the results (JSONL).")],
    errors: Annotated[
        Path | None, typer.Option("--errors", help="Where to write the failures (JSONL).")
    ] = None,
    fmt: Format = "batch",
    as_json: Annotated[bool, typer.Option("--json", help="Print counts as JSON.")] = False,
) -> None:
    """Write a batch's results (OpenAI Batch output lines, or records with answers); failures go to --errors."""
    settings = _settings()

    async def go() -> dict[str, Any]:
        engine = create_engine(settings.database_url, pool_size=1)
        try:
            async with engine.connect() as conn:
                summary = await batch_summary(conn, batch)
            report = await export_to_files(engine, batch, output, errors, fmt)
            return {
                "id": batch,
                "status": summary.status,
                "completed": report.completed,
                "failed": report.failed,
                "unfinished": summary.total - report.completed - report.failed,
            }
        finally:
            await engine.dispose()

    try:
        counts = _run(go())
    except BatchNotFound as exc:
        _fail(str(exc), 2)
    if as_json:
        sys.stdout.write(orjson.dumps(counts).decode() + "\n")
        return
    err.print(
        f"wrote {counts['completed']} results to {output}"
        + (f" and {counts['failed']} failures to {errors}" if errors else f" ({counts['failed']} failed)")
        + (f"; {counts['unfinished']} requests are not finished yet" if counts["unfinished"] else ""),
        highlight=False,
    )


@app.command()
def usage(
    batch: Annotated[str | None, typer.Argument(help="Batch id; omit for every batch.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Requests, calls, tokens and cost by batch and by the model that served, from every attempt."""
    settings = _settings()

    async def go() -> UsageReport:
        engine = create_engine(settings.database_url, pool_size=1)
        try:
            return await usage_report(engine, batch)
        finally:
            await engine.dispose()

    try:
        report = _run(go())
    except BatchNotFound as exc:
        _fail(str(exc), 2)
    if as_json:
        sys.stdout.write(orjson.dumps(report.to_json()).decode() + "\n")
        return
    table = Table(
        "batch", "model served", "requests", "calls", "prompt", "completion", "reasoning", "cached", "cost"
    )
    for batch_id, models in report.models.items():
        for model, line in models.items():
            _usage_row(table, batch_id, model or "(no answer)", line)
        if len(models) > 1:
            _usage_row(table, batch_id, "all", report.batches[batch_id], style="bold")
    if len(report.batches) > 1:
        _usage_row(table, "all", "", report.total, style="bold")
    out.print(table)
    if report.total.cost_estimated:
        err.print("* cost estimated from the model's list prices: OpenRouter reported none for some calls")


def _usage_row(table: Table, batch_id: str, model: str, line: UsageLine, style: str | None = None) -> None:
    table.add_row(
        batch_id,
        model,
        str(line.requests),
        str(line.calls),
        str(line.prompt_tokens),
        str(line.completion_tokens),
        str(line.reasoning_tokens),
        str(line.cached_tokens),
        f"${line.cost:.6f}" + ("*" if line.cost_estimated else ""),
        style=style,
    )


@app.command()
def resume(
    batch: Annotated[str, typer.Argument(help="Batch id.")],
    max_cost: Annotated[
        str | None,
        typer.Option("--max-cost", help="A new spending cap (USD), for a batch stopped on its budget."),
    ] = None,
) -> None:
    """Run a paused batch again now (after fixing the key, adding credits, raising its budget, or early)."""
    settings = _settings()
    cap = _usd(max_cost, "--max-cost") if max_cost is not None else None

    async def go() -> str:
        engine = create_engine(settings.database_url, pool_size=1)
        try:
            return await resume_batch(engine, batch, cap)
        finally:
            await engine.dispose()

    try:
        state = _run(go())
    except (BatchNotFound, ResumeRefused) as exc:
        _fail(str(exc), 2)
    err.print(f"{batch}: {state}", highlight=False)


@app.command()
def cancel(batch: Annotated[str, typer.Argument(help="Batch id.")]) -> None:
    """Cancel a batch: no new call starts; calls in flight finish and are kept; results stay exportable."""
    settings = _settings()

    async def go() -> str:
        engine = create_engine(settings.database_url, pool_size=1)
        try:
            return await cancel_batch(engine, batch)
        finally:
            await engine.dispose()

    try:
        state = _run(go())
    except BatchNotFound as exc:
        _fail(str(exc), 2)
    err.print(f"{batch}: {state}", highlight=False)


@app.command()
def retry(
    batch: Annotated[str, typer.Argument(help="Batch id.")],
    failed: Annotated[
        bool, typer.Option("--failed", help="Queue the failed requests again with fresh attempts.")
    ] = False,
) -> None:
    """Run a batch's failed requests again (`--failed`), each with its full number of attempts."""
    if not failed:
        _fail("say what to retry: `orbatch retry BATCH --failed`", 2)
    settings = _settings()

    async def go() -> int:
        engine = create_engine(settings.database_url, pool_size=1)
        try:
            return await retry_failed(engine, batch)
        finally:
            await engine.dispose()

    try:
        count = _run(go())
    except (BatchNotFound, ResumeRefused) as exc:
        _fail(str(exc), 2)
    err.print(f"{batch}: {count} failed requests queued again", highlight=False)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def simulator(ctx: typer.Context) -> None:
    """Serve the OpenRouter simulator on loopback (no key, no quota); `--help` lists its options."""
    from worker.simulator import main as simulator_main

    simulator_main(list(ctx.args))


def main() -> None:
    """Console-script entry point: unexpected errors are one clear line (a traceback with ORBATCH_LOG_LEVEL=DEBUG)."""
    try:
        app()
    except (OSError, DBAPIError, RedisError) as exc:
        if os.environ.get("ORBATCH_LOG_LEVEL", "").upper() == "DEBUG":
            raise
        if isinstance(exc, RedisError):
            what = "Redis (REDIS_URL)"
        elif isinstance(exc, DBAPIError):
            what = "Postgres (DATABASE_URL; after upgrading orbatch, run `orbatch db upgrade`)"
        else:
            what = "a service (check DATABASE_URL and REDIS_URL)"
        message = str(getattr(exc, "orig", None) or exc)
        detail = redact(message.splitlines()[0] if message else type(exc).__name__)
        err.print(f"[bold red]error:[/] {what}: {detail}", highlight=False)
        sys.exit(1)
