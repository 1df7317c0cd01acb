"""The commands on workers: `worker` runs one, `workers` lists the live ones."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Annotated

import typer

from jobs.cli.context import print_json, redis_in_use, services, where_redis
from jobs.cli.terminal import err, out, say, say_warning, workers_table
from jobs.core.errors import SettingsError
from jobs.core.logs import configure_logging
from jobs.core.settings import Settings, get_settings
from jobs.scheduling.queue import connect
from jobs.scheduling.roster import Heartbeat, read_heartbeats

__all__ = ["worker", "workers"]

# A worker waiting for its key (ORBATCH_WAIT_FOR_KEY) says so, and looks again, this often.
KEY_WAIT_SECONDS = 60.0


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
    settings = get_settings()
    if metrics_port is not None:
        settings = settings.model_copy(update={"metrics_port": metrics_port})
    if "ORBATCH_LOG_LEVEL" not in os.environ:
        # A worker says what it is doing (its start, each batch, a summary now and then) unless told otherwise.
        key = settings.openrouter_api_key.get_secret_value() if settings.openrouter_api_key else None
        configure_logging("INFO", secrets=[key] if key else [])
    _key_or_wait(settings)
    from worker.runner import run_worker

    with services(settings, redis=True) as up:
        asyncio.run(run_worker(up.settings, concurrency, burst))


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


def workers(as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False) -> None:
    """The live workers, from their heartbeats: host, pid, version, load, last activity.

    On REDIS_URL; without it, on the embedded Redis of a `run`, `serve` or `worker` using ORBATCH_DATA_DIR.
    """
    settings = get_settings()
    url = redis_in_use(settings)

    async def go(url: str) -> list[Heartbeat]:
        redis = await connect(url, settings.queue_name, patient=False)
        try:
            return await read_heartbeats(redis, settings.queue_name)
        finally:
            await redis.aclose()

    beats = [] if url is None else asyncio.run(go(url))
    if as_json:
        print_json([beat.to_json() for beat in beats])
    elif beats:
        out.print(workers_table(beats))
    else:
        say(err, f"no live workers on {where_redis(url, settings)} (queue {settings.queue_name})")
