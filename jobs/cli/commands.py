"""The `orbatch` command line: submit, run workers, watch, export and steer batches."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.metadata
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, TypeVar

import httpx
import orjson
import typer
import uvloop
from arq.connections import ArqRedis
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.cli.oneshot import RunPlan, run_file
from jobs.cli.options import (
    CheckModels,
    Dedupe,
    FreeOnly,
    InputFile,
    JsonSchema,
    MaxAttempts,
    MaxCost,
    MaxTokens,
    Metadata,
    Models,
    Name,
    New,
    Params,
    Priority,
    SkipInvalid,
    System,
    Temperature,
    TemplateText,
    parse_usd,
    submit_options,
)
from jobs.cli.progress import (
    ProgressView,
    exit_status,
    finished,
    needs_action,
    read_fleet,
    watch,
    with_skipped_lines,
)
from jobs.cli.terminal import (
    batches_table,
    err,
    keys_table,
    out,
    say,
    say_error,
    say_warning,
    summary_table,
    usage_table,
    workers_table,
)
from jobs.core.constants import KEY_WAIT_SECONDS
from jobs.core.db import create_engine, ensure_database, upgrade
from jobs.core.errors import BadInput, Interrupted, OrbatchError, ServiceUnavailable, SettingsError
from jobs.core.logs import configure_logging, redact
from jobs.core.settings import Settings, get_settings
from jobs.core.states import BatchPriority, BatchStatus, PauseReason
from jobs.observation.schedule_view import read_competition, read_later
from jobs.observation.standing import BatchSummary, batch_summary, list_batches
from jobs.observation.usage import UsageReport, quota_spenders, usage_report
from jobs.operations.control import (
    cancel_batch,
    change_priority,
    delete_batch,
    resolve_batch,
    resume_batch,
    retry_failed,
)
from jobs.operations.results import STDOUT, ExportFormat, check_destinations, destination, export_to_files
from jobs.scheduling.fleet import limits_key, read_breaker, throttle_namespace
from jobs.scheduling.queue import connect
from jobs.scheduling.roster import Heartbeat, no_taker, read_heartbeats, takers
from jobs.services.embedded import LocalServices, embedded_database, local_services, running_redis
from jobs.simulator.main import simulator_command
from jobs.submission.catalog import model_rows, render_table, rows_json, shipped_rows, simulator_rows
from jobs.submission.intake import take_in
from worker.report import where

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
BatchId = Annotated[
    str,
    typer.Argument(help="Batch id, or a batch's name (the latest batch of that name).", show_default=False),
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
keys_app = typer.Typer(
    help="Keys of the HTTP API (`orbatch serve`): one per owner, shown once, stored only as a hash.",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")


def _settings() -> Settings:
    return get_settings()


@contextlib.contextmanager
def _database(settings: Settings) -> Iterator[Settings]:
    """The settings with the database every command uses: DATABASE_URL when set, else the embedded one in
    ORBATCH_DATA_DIR that `orbatch run` uses (started for the command if it is not running, stopped after)."""
    database_given, _ = settings.services_given()
    if database_given:
        yield settings
        return
    with embedded_database(settings.data_dir) as url:

        async def prepare() -> None:
            # A data dir that never saw a run has no database or schema yet.
            await ensure_database(url)
            await upgrade(url)

        asyncio.run(prepare())
        yield settings.model_copy(update={"database_url": url})


def _with_engine(work: Callable[[AsyncEngine], Awaitable[T]], pool_size: int = 1) -> T:
    """Run `work` on an engine for the database (see `_database`), disposed of afterwards, in a fresh loop."""
    with _database(_settings()) as settings:

        async def go() -> T:
            engine = create_engine(settings.database_url, pool_size=pool_size)
            try:
                return await work(engine)
            finally:
                await engine.dispose()

        return asyncio.run(go())


async def _batch(engine: AsyncEngine, ref: str) -> str:
    """The id of the batch a user named by id or name; a shared name is said on stderr."""
    async with engine.connect() as conn:
        batch_id, note = await resolve_batch(conn, ref)
    if note:
        say(err, note)
    return batch_id


def _with_database(work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """`_with_engine` on DATABASE_URL, or, when it is unset, on the embedded Postgres `run` and `serve` use
    (created and migrated if it is new), so keys can be made for an `orbatch serve` with embedded services."""
    settings = _settings()
    if settings.services_given()[0]:
        return _with_engine(work)
    with local_services(settings.data_dir, None, settings.redis_url) as services:

        async def go() -> T:
            await ensure_database(services.database_url)
            await upgrade(services.database_url)
            engine = create_engine(services.database_url, pool_size=1)
            try:
                return await work(engine)
            finally:
                await engine.dispose()

        return asyncio.run(go())


def _logs_for_people(settings: Settings) -> None:
    """A command a person watches logs plain lines, never JSON, printed above its progress display."""
    key = settings.openrouter_api_key.get_secret_value() if settings.openrouter_api_key else None
    level = logging.getLevelName(logging.getLogger().level)
    configure_logging(level, secrets=[key] if key else [], json=False)


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value).decode() + "\n")


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"orbatch {importlib.metadata.version('orbatch')}\n")
        raise typer.Exit(0)


@app.callback()
def _main(
    log_level: Annotated[str, typer.Option(envvar="ORBATCH_LOG_LEVEL", help="Log level.")] = "WARNING",
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    try:
        settings = get_settings()
    except SettingsError:
        # The command itself reports the bad setting; `--help` must still work.
        configure_logging(log_level)
        return
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

    created = asyncio.run(go())
    say(err, ("Created the database; " if created else "") + f"schema at {revision}.")


def _redis_in_use(settings: Settings) -> str | None:
    """REDIS_URL when set; without it, the data dir's embedded Redis while a `run`, `serve` or `worker` keeps
    it (the rule every command follows, as for the embedded Postgres); None when there is neither."""
    if settings.services_given()[1]:
        return settings.redis_url
    return running_redis(settings.data_dir)


def _where_redis(url: str | None, settings: Settings) -> str:
    if url is not None:
        return where(url)
    return (
        f"no Redis (REDIS_URL is not set and no orbatch command keeps an embedded one in {settings.data_dir})"
    )


async def _connect_in_use(settings: Settings) -> ArqRedis | None:
    """A connection to the Redis in use (see `_redis_in_use`), or None when there is none or it is away."""
    url = _redis_in_use(settings)
    if url is None:
        return None
    try:
        return await connect(url, settings.queue_name, patient=False)
    except (OSError, RedisError):
        return None


async def _watch_batch(
    settings: Settings, engine: AsyncEngine, batch_id: str, view: ProgressView
) -> BatchSummary:
    """Watch a batch run by other workers until it finishes or stops; Ctrl-C ends the watch only."""
    redis = await _connect_in_use(settings)
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
    temperature: Temperature = None,
    max_tokens: MaxTokens = None,
    params: Params = None,
    metadata: Metadata = None,
    priority: Priority = None,
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
    options = submit_options(
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
        temperature=temperature,
        max_tokens=max_tokens,
        params=params,
        metadata=metadata,
        priority=priority,
    )

    redis_url = _redis_in_use(settings)

    async def go(engine: AsyncEngine) -> BatchSummary:
        in_use = settings if redis_url is None else settings.model_copy(update={"redis_url": redis_url})
        _, summary = await take_in(
            engine, in_use, file, options, check_models, err, queue_now=redis_url is not None
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

    summary = _with_engine(go, pool_size=2)
    result = summary.to_json()
    if as_json:
        _print_json(result)
    status = exit_status(summary) if wait else 0
    if not wait and not as_json:
        sys.stdout.write(result["id"] + "\n")
        if result["status"] == "in_progress":
            say(err, f"submitted {result['request_counts']['total']} requests as {result['id']}")
    raise typer.Exit(with_skipped_lines(status, summary, err))


@app.command()
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
    temperature: Temperature = None,
    max_tokens: MaxTokens = None,
    params: Params = None,
    metadata: Metadata = None,
    priority: Priority = None,
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
        raise SettingsError(
            "OPENROUTER_API_KEY is not set: export your OpenRouter key, or try the pipeline without one "
            "against the local simulator with --simulator"
        )
    check_destinations(output, errors)
    options = submit_options(
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
        temperature=temperature,
        max_tokens=max_tokens,
        params=params,
        metadata=metadata,
        priority=priority,
    )
    plan = RunPlan(file, options, check_models, output, errors, fmt, concurrency, use_simulator)
    _logs_for_people(settings)
    try:
        with _local_services(settings) as (local, services):
            code = asyncio.run(run_file(local, plan, err, services))
    except KeyboardInterrupt:
        # Before the batch was stored and watched (while starting services or submitting): nothing to keep.
        raise Interrupted("interrupted") from None
    raise typer.Exit(code)


@app.command()
def worker(
    burst: Annotated[bool, typer.Option(help="Exit once no request is left to run now.")] = False,
    concurrency: Annotated[
        int | None, typer.Option(min=1, max=4096, help="Requests run at once by this process.")
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="Serve Prometheus metrics at /metrics on this port (default ORBATCH_METRICS_PORT; none).",
        ),
    ] = None,
) -> None:
    """Run an arq worker that executes queued requests (and feeds the queue from Postgres)."""
    settings = _settings()
    if metrics_port is not None:
        settings = settings.model_copy(update={"metrics_port": metrics_port})
    if "ORBATCH_LOG_LEVEL" not in os.environ:
        # A worker says what it is doing (its start, each batch, a summary now and then) unless told otherwise.
        key = settings.openrouter_api_key.get_secret_value() if settings.openrouter_api_key else None
        configure_logging("INFO", secrets=[key] if key else [])
    _key_or_wait(settings)
    from worker.runner import run_worker

    with _services(settings) as local:
        asyncio.run(run_worker(local, concurrency, burst))


def _key_or_wait(settings: Settings) -> None:
    """Return once there is a key; without one, fail (or with ORBATCH_WAIT_FOR_KEY, wait and say why)."""
    while True:
        try:
            settings.api_key()
            return
        except SettingsError as exc:
            message = f"{exc} (or point OPENROUTER_BASE_URL at `orbatch simulator` and set any key)"
            if not settings.wait_for_key:
                raise SettingsError(message) from None
            say_warning(
                err, f"{message}; waiting (ORBATCH_WAIT_FOR_KEY): set the key and restart this worker"
            )
        time.sleep(KEY_WAIT_SECONDS)


@contextlib.contextmanager
def _services(settings: Settings) -> Iterator[Settings]:
    """The settings with DATABASE_URL and REDIS_URL as given, or embedded ones for those that are not."""
    with _local_services(settings) as (local, _):
        yield local


@contextlib.contextmanager
def _local_services(settings: Settings) -> Iterator[tuple[Settings, LocalServices]]:
    """`_services`, and the services themselves (a run watches its embedded ones' processes)."""
    database_given, redis_given = settings.services_given()
    with local_services(
        settings.data_dir,
        settings.database_url if database_given else None,
        settings.redis_url if redis_given else None,
    ) as services:
        if services.started:
            say(
                err,
                f"embedded {' and '.join(services.started)} (DATABASE_URL / REDIS_URL not set), "
                f"data in {settings.data_dir}",
            )
            if "postgres" in services.started:

                async def prepare() -> None:
                    await ensure_database(services.database_url)
                    await upgrade(services.database_url)

                asyncio.run(prepare())
        local = settings.model_copy(
            update={"database_url": services.database_url, "redis_url": services.redis_url}
        )
        yield local, services


@app.command()
def workers(as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False) -> None:
    """The live workers, from their heartbeats: host, pid, version, load, last activity.

    On REDIS_URL; without it, on the embedded Redis of a `run`, `serve` or `worker` using ORBATCH_DATA_DIR.
    """
    settings = _settings()
    url = _redis_in_use(settings)

    async def go(url: str) -> list[Heartbeat]:
        redis = await connect(url, settings.queue_name, patient=False)
        try:
            return await read_heartbeats(redis, settings.queue_name)
        finally:
            await redis.aclose()

    beats = [] if url is None else asyncio.run(go(url))
    if as_json:
        _print_json([beat.to_json() for beat in beats])
    elif beats:
        out.print(workers_table(beats))
    else:
        say(err, f"no live workers on {_where_redis(url, settings)} (queue {settings.queue_name})")


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
    if watch_:
        if batch is None:
            raise BadInput("--watch follows one batch: `orbatch status BATCH --watch`")
        _watch_command(batch, as_json)
        return

    settings = _settings()

    async def go(engine: AsyncEngine) -> tuple[list[BatchSummary], str | None]:
        async with engine.connect() as conn:
            found = (
                [await batch_summary(conn, await _batch(engine, batch))]
                if batch
                else await list_batches(conn)
            )
        waiting = None
        if batch and not finished(found[0]):
            waiting = await _waiting(settings, found[0])
        if batch and found[0].status == BatchStatus.IN_PROGRESS:
            async with engine.connect() as conn:
                turn = (await read_competition(conn, found[0].id, found[0].simulated)).says(
                    found[0].priority, found[0].counts.get("running", 0)
                )
                later = (await read_later(conn, found[0].id)).says(datetime.now(UTC))
            waiting = "; ".join(filter(None, [waiting, turn, later]))
        if batch and found[0].pause_reason == PauseReason.QUOTA:
            spent = await _quota_spent_by(settings, engine, found[0].simulated)
            waiting = "; ".join(filter(None, [waiting, spent]))
        return found, waiting

    summaries, waiting = _with_engine(go)
    if as_json:
        _print_json(
            {**summaries[0].to_json(), "waiting": waiting} if batch else [s.to_json() for s in summaries]
        )
    elif batch:
        out.print(summary_table(summaries[0], waiting))
    else:
        out.print(batches_table(summaries))


async def _waiting(settings: Settings, summary: BatchSummary) -> str | None:
    """What the batch waits for that Postgres does not say: the outage breaker, or no live worker that can
    take it up (read from the Redis in use); None when nothing, or when Redis cannot be read."""
    url = _redis_in_use(settings)
    redis = await _connect_in_use(settings)
    if redis is None:
        return None if url is not None else no_taker(summary.simulated, _where_redis(None, settings))
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
        return no_taker(summary.simulated, _where_redis(url, settings))
    return None


async def _quota_spent_by(settings: Settings, engine: AsyncEngine, simulated: bool) -> str | None:
    """Which batches spent the free tier's current day, as the workers count days (a simulator's are short)."""
    day_seconds = settings.free_day_seconds
    redis = await _connect_in_use(settings)
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
    batch_id = await _batch(engine, ref)
    return await _watch_batch(settings, engine, batch_id, ProgressView(out, batch_id, as_json))


def _watch_command(batch: str, as_json: bool) -> None:
    settings = _settings()
    summary = _with_engine(lambda engine: _watch_resolved(settings, engine, batch, as_json))
    if out.is_terminal and not as_json:
        out.print(summary_table(summary))
    raise typer.Exit(exit_status(summary))


@app.command()
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
    as_json: Annotated[bool, typer.Option("--json", help="Print counts as JSON (with -o FILE).")] = False,
) -> None:
    """Write a batch's results (OpenAI Batch output lines, or records with answers) to stdout or -o FILE;
    failures go to --errors. What was written is counted on stderr."""
    check_destinations(output, errors)
    if as_json and STDOUT in (output, errors):
        what, fix = ("the results", "-o FILE") if output == STDOUT else ("the failures", "--errors FILE")
        raise BadInput(f"--json prints the counts on stdout, where {what} would go: give {fix}", param="json")

    async def go(engine: AsyncEngine) -> dict[str, Any]:
        async with engine.connect() as conn:
            summary = await batch_summary(conn, await _batch(engine, batch))
        report = await export_to_files(engine, summary.id, output, errors, fmt)
        return {
            "id": summary.id,
            "status": summary.status,
            "completed": report.completed,
            "failed": report.failed,
            "cancelled": summary.counts.get("cancelled", 0),
            "unfinished": summary.counts.get("pending", 0) + summary.counts.get("running", 0),
        }

    counts = _with_engine(go)
    if as_json:
        _print_json(counts)
        return
    say(
        err,
        f"wrote {counts['completed']} results to {destination(output)}"
        + (
            f" and {counts['failed']} failures to {destination(errors)}"
            if errors
            else f" ({counts['failed']} failed)"
        )
        + (f"; {counts['cancelled']} requests were cancelled" if counts["cancelled"] else "")
        + (
            f"; {counts['unfinished']} requests are not finished yet"
            if counts["unfinished"] and counts["status"] not in ("cancelled", "cancelling")
            else ""
        ),
    )


@app.command()
def usage(
    batch: Annotated[str | None, typer.Argument(help="Batch id; omit for every batch.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Requests, calls, tokens and cost by batch and by the model that served, from every attempt."""

    async def go(engine: AsyncEngine) -> UsageReport:
        return await usage_report(engine, await _batch(engine, batch) if batch else None)

    report = _with_engine(go)
    if as_json:
        _print_json(report.to_json())
        return
    out.print(usage_table(report))
    if report.total.cost_estimated:
        say(err, "* cost estimated from the model's list prices: OpenRouter reported none for some calls")


@app.command()
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
        return await resume_batch(engine, await _batch(engine, batch), cap)

    state = _with_engine(go)
    say(err, f"{batch}: {state}")


@app.command()
def cancel(batch: BatchId) -> None:
    """Cancel a batch: no new call starts; calls in flight finish and are kept; results stay exportable."""

    async def go(engine: AsyncEngine) -> str:
        return await cancel_batch(engine, await _batch(engine, batch))

    state = _with_engine(go)
    say(err, f"{batch}: {state}")


@app.command("priority")
def set_priority(
    batch: BatchId,
    level: Annotated[BatchPriority, typer.Argument(help="urgent, normal or background.", show_default=False)],
) -> None:
    """Change which batches run first: urgent before every normal batch, background after every normal one."""

    async def go(engine: AsyncEngine) -> tuple[str, str]:
        batch_id = await _batch(engine, batch)
        return batch_id, await change_priority(engine, batch_id, level)

    batch_id, said = _with_engine(go)
    say(err, f"{batch_id}: {said}")


@app.command()
def retry(
    batch: BatchId,
    failed: Annotated[
        bool, typer.Option("--failed", help="The failed requests (what retry does; kept for scripts).")
    ] = True,
) -> None:
    """Run a batch's failed requests again, each with its full number of attempts."""

    async def go(engine: AsyncEngine) -> tuple[str, int]:
        batch_id = await _batch(engine, batch)
        return batch_id, await retry_failed(engine, batch_id)

    batch_id, count = _with_engine(go)
    say(err, f"{batch_id}: {count} failed requests queued again")


@app.command()
def delete(
    batch: BatchId,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Delete a finished batch and all its rows (requests, attempts, results): for data retention.

    A batch with calls running is refused: cancel it first.
    """

    async def go(engine: AsyncEngine) -> tuple[str, int]:
        batch_id = await _batch(engine, batch)
        if not yes and sys.stdin.isatty() and not typer.confirm(f"Delete {batch_id} and all its rows?"):
            raise Interrupted("nothing deleted")
        return batch_id, await delete_batch(engine, batch_id)

    batch_id, total = _with_engine(go)
    say(err, f"deleted {batch_id} and its {total} requests")


app.command("simulator")(simulator_command)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free port).")] = 8000,
    worker_: Annotated[
        bool,
        typer.Option(
            "--worker/--no-worker",
            help="Run the batches with an arq worker in this process (--no-worker when a fleet runs them).",
        ),
    ] = True,
    no_auth: Annotated[
        bool,
        typer.Option(
            "--no-auth",
            help="Take requests without a key, all as the owner `local` (only on a loopback address).",
        ),
    ] = False,
    concurrency: Annotated[
        int | None, typer.Option(min=1, max=4096, help="Requests run at once by the in-process worker.")
    ] = None,
    use_simulator: Annotated[
        bool,
        typer.Option(
            "--simulator",
            help="The in-process worker calls a local OpenRouter simulator: no key, no quota, no real model.",
        ),
    ] = False,
) -> None:
    """Serve OpenAI's Files and Batches API (for the official `openai` SDK) over the same Postgres and Redis.

    Uses DATABASE_URL and REDIS_URL when set; otherwise starts an embedded Postgres (kept under
    ORBATCH_DATA_DIR) and an embedded Redis, as `run` does, so `orbatch serve` alone is a working batch API on
    one machine. Requests need a key from `orbatch keys create NAME` unless --no-auth.
    """
    from jobs.cli.serve import ServePlan, check_plan
    from jobs.cli.serve import serve as serve_api

    settings = _settings()
    database_given, _ = settings.services_given()
    plan = ServePlan(
        host=host,
        port=port,
        no_auth=no_auth,
        worker=worker_,
        concurrency=concurrency,
        simulator=use_simulator,
        embedded_database=not database_given,
    )
    check_plan(settings, plan)
    with _services(settings) as local:
        # uvloop: the server answers many small requests, and its C event loop spends a fraction of asyncio's
        # time on each socket read and write.
        uvloop.run(serve_api(local, plan, err))


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="The owner the key acts as (letters, digits, . _ @ -).")],
    rate_limit: Annotated[
        int | None,
        typer.Option(
            "--rate-limit",
            min=1,
            help="Requests a minute for this key (default: ORBATCH_API_RATE_PER_MINUTE).",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help='Print {"name", "key", "callback_secret"} as one JSON object.')
    ] = False,
) -> None:
    """Make a key for NAME and print it, once: only its hash is stored.

    NAME owns every file and batch the key makes. After `keys revoke NAME`, a new key for NAME sees them again.
    The callback secret signs NAME's completion callbacks. Without DATABASE_URL the key goes to the embedded
    Postgres `orbatch serve` uses (make keys while it is stopped).
    """
    from jobs.api.keys import create_key

    made = _with_database(lambda engine: create_key(engine, name, rate_limit))
    if as_json:
        _print_json({"name": made.name, "key": made.key, "callback_secret": made.callback_secret})
        return
    sys.stdout.write(f"{made.key}\n")
    say(
        err,
        f"key for {made.name} (shown only now; keep it secret). Its callbacks are signed with "
        f"{made.callback_secret}",
    )


@keys_app.command("list")
def keys_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Every key: owner, the key's first characters, rate limit, when made and revoked."""
    from jobs.api.keys import list_keys

    keys = _with_database(list_keys)
    rows = [
        {
            "name": k.name,
            "hint": k.hint + "…",
            "rate_per_minute": k.rate_per_minute,
            "created_at": k.created_at.isoformat(),
            "revoked_at": None if k.revoked_at is None else k.revoked_at.isoformat(),
        }
        for k in keys
    ]
    if as_json:
        _print_json(rows)
        return
    out.print(keys_table(rows))


@keys_app.command("revoke")
def keys_revoke(name: Annotated[str, typer.Argument(help="The owner whose key to revoke.")]) -> None:
    """Revoke NAME's key: its next request is refused (401). NAME's files and batches stay."""
    from jobs.api.keys import revoke_key

    _with_database(lambda engine: revoke_key(engine, name))
    say(err, f"revoked {name}'s key")


@app.command()
def models(
    free: Annotated[bool, typer.Option("--free", help="Only the free (`:free`) variants.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON array (where it comes from is said on stderr).")
    ] = False,
    use_simulator: Annotated[
        bool,
        typer.Option(
            "--simulator",
            help="The catalogue orbatch's simulator serves (OpenRouter's list as shipped, and the sim/* test "
            "models), read with no network.",
        ),
    ] = False,
) -> None:
    """List the models OpenRouter offers (or the simulator, per OPENROUTER_BASE_URL), with their prices.

    When the list cannot be read, the copy of OpenRouter's list shipped with orbatch is listed, and said to be.
    """
    settings = _settings()
    if use_simulator:
        rows, source = simulator_rows(free)
    else:
        key = settings.openrouter_api_key.get_secret_value() if settings.openrouter_api_key else None
        url = f"{settings.openrouter_base_url.rstrip('/')}/models"
        try:
            rows, source = asyncio.run(model_rows(settings.openrouter_base_url, key, free_only=free)), url
        except (httpx.HTTPError, orjson.JSONDecodeError) as exc:
            rows, source = shipped_rows(free)
            say_warning(
                err,
                redact(
                    f"cannot read the model list from {url} ({type(exc).__name__}: {exc}); listing {source} "
                    "instead: models added since are missing, and prices may have changed"
                ),
            )
    if as_json:
        # stdout stays the JSON array it always was; where the rows come from goes to stderr.
        say(err, f"{len(rows)} models from {source}")
        _print_json(rows_json(rows))
    else:
        out.print(render_table(rows, source))


def _as_orbatch_error(exc: BaseException) -> OrbatchError | None:
    """A service failure from below (a socket, Postgres, Redis) as the error a user is shown."""
    if isinstance(exc, RedisError):
        what = "Redis (REDIS_URL)"
    elif isinstance(exc, DBAPIError):
        what = "Postgres (DATABASE_URL; after upgrading orbatch, run `orbatch db upgrade`)"
    elif isinstance(exc, OSError):
        what = "a service (check DATABASE_URL and REDIS_URL)"
    else:
        return None
    message = str(getattr(exc, "orig", None) or exc)
    detail = redact(message.splitlines()[0] if message else type(exc).__name__)
    return ServiceUnavailable(f"{what}: {detail}")


def main() -> None:
    """Console-script entry point: every error a user can meet is one clear message and its exit status.

    A traceback is shown only with ORBATCH_LOG_LEVEL=DEBUG.
    """
    try:
        app()
    except (OrbatchError, OSError, DBAPIError, RedisError) as exc:
        error = exc if isinstance(exc, OrbatchError) else _as_orbatch_error(exc)
        if error is None or os.environ.get("ORBATCH_LOG_LEVEL", "").upper() == "DEBUG":
            raise
        for line in error.details:
            say(err, redact(line))
        if isinstance(error, Interrupted):
            say(err, error.message)
        else:
            say_error(err, redact(error.message))
        sys.exit(error.exit_status)
