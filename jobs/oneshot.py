"""`orbatch run`: one file start to finish in this process: submit, in-process worker, progress, export."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import shlex
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr
from rich.console import Console
from rich.text import Text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.constants import EXIT_INTERRUPTED
from jobs.control import resume_batch
from jobs.db import create_engine, ensure_database, upgrade
from jobs.eta import FreeLimits
from jobs.export import ExportFormat, ExportReport, export_to_files
from jobs.intake import take_in
from jobs.progress import ProgressView, exit_status, finished, free_limits, needs_action, watch
from jobs.queue import connect
from jobs.settings import Settings
from jobs.states import BatchStatus, PauseReason
from jobs.status import BatchSummary
from jobs.submit import SubmitOptions
from jobs.terminal import say

__all__ = ["RunPlan", "run_file", "start_simulator"]

# The key the simulator is called with: it checks that one is sent, not which.
SIMULATOR_KEY = "sk-or-v1-simulator"


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


async def start_simulator(settings: Settings, stack: contextlib.AsyncExitStack, err: Console) -> Settings:
    """Serve the OpenRouter simulator on loopback for this process; the settings that point the worker at it."""
    from worker.simconfig import config_from_args
    from worker.simulator import API_PREFIX, Simulator, serve

    config = config_from_args(shlex.split(settings.simulator_args))
    runner, port = await serve(Simulator(config), "127.0.0.1", 0)
    stack.push_async_callback(runner.cleanup)
    err.print(
        Text.assemble(
            ("simulator: ", "bold yellow"),
            "OpenRouter is simulated on this machine: no real model is called and no quota or money is used; "
            f"answers echo the prompts. Free tier: {config.free_per_minute} requests per "
            f"{config.free_window_seconds:g} s, {config.free_per_day} a day.",
        ),
        highlight=False,
    )
    return settings.model_copy(
        update={
            "openrouter_base_url": f"http://127.0.0.1:{port}{API_PREFIX}",
            "openrouter_api_key": SecretStr(SIMULATOR_KEY),
        }
    )


async def run_file(settings: Settings, plan: RunPlan, err: Console) -> int:
    """Run the plan; returns the exit status (0 done, 3 some failed, 4 stopped, 130 interrupted)."""
    async with contextlib.AsyncExitStack() as stack:
        if plan.simulator:
            settings = await start_simulator(settings, stack, err)
        await ensure_database(settings.database_url)
        await upgrade(settings.database_url)
        engine = create_engine(settings.database_url, pool_size=2)
        stack.push_async_callback(engine.dispose)
        report, summary = await take_in(engine, settings, plan.file, plan.options, plan.check_models, err)
        batch_id = report.batch_id
        if (
            report.reused
            and summary.status == BatchStatus.PAUSED
            and summary.pause_reason
            in (
                PauseReason.AUTH,
                PauseReason.CREDITS,
            )
        ):
            # Running the same file again is how a user says the key or the credits were fixed.
            say(err, f"{batch_id} was paused ({summary.pause_reason}); resuming it")
            await resume_batch(engine, batch_id, None)
        redis = await connect(settings.redis_url, settings.queue_name, patient=False)
        stack.push_async_callback(redis.aclose)

        limits = functools.partial(free_limits, settings, redis)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
            stack.callback(loop.remove_signal_handler, sig)
        summary = await _work(settings, plan, engine, batch_id, limits, stop, err)
        exported = await export_to_files(engine, batch_id, plan.output, plan.errors, plan.fmt)
    _report(summary, exported, plan, err)
    if stop.is_set() and not finished(summary) and not needs_action(summary):
        say(err, f"interrupted: {batch_id} is kept; run the same command again to carry on with it")
        return EXIT_INTERRUPTED
    return exit_status(summary)


async def _work(
    settings: Settings,
    plan: RunPlan,
    engine: AsyncEngine,
    batch_id: str,
    limits: Callable[[], Awaitable[FreeLimits]],
    stop: asyncio.Event,
    err: Console,
) -> BatchSummary:
    """Run an arq worker in this process while showing progress, until the batch is done or stopped."""
    from worker.runner import build_worker

    worker = build_worker(settings, plan.concurrency, handle_signals=False)
    main = asyncio.create_task(worker.async_run())
    try:
        with ProgressView(err, batch_id) as view:
            watcher = asyncio.create_task(watch(engine, batch_id, limits, view, stop))
            done, _ = await asyncio.wait({main, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if watcher in done:
                return watcher.result()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            main.result()  # the worker's own error: Redis, Postgres or the key at its start
            raise RuntimeError("the in-process worker stopped before the batch was done")
    finally:
        main.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await main
        await worker.close()


def _report(summary: BatchSummary, exported: ExportReport, plan: RunPlan, err: Console) -> None:
    counts = summary.counts
    line = f"{summary.id}: {summary.status}; {exported.completed} results written to {plan.output}"
    if exported.failed:
        line += (
            f", {exported.failed} failures to {plan.errors}"
            if plan.errors
            else f"; {exported.failed} requests failed (--errors FILE writes them)"
        )
    unfinished = counts.get("pending", 0) + counts.get("running", 0)
    if unfinished:
        line += f"; {unfinished} not finished yet"
    line += f"; cost ${summary.cost:.6f}"
    say(err, line)
    if needs_action(summary) and summary.status == BatchStatus.PAUSED:
        say(err, f"paused ({summary.pause_reason}): {summary.pause_message}")
