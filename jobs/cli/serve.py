"""`orbatch serve`: the command; the server itself (`jobs.cli.server`) is imported only when it runs."""

from __future__ import annotations

from typing import Annotated

import typer
import uvloop

from jobs.cli.context import services
from jobs.cli.terminal import err
from jobs.core.settings import get_settings

__all__ = ["serve"]


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
    from jobs.cli.server import ServePlan, check_plan
    from jobs.cli.server import serve as serve_api

    settings = get_settings()
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
    with services(settings, redis=True) as up:
        # uvloop: the server answers many small requests, and its C event loop spends a fraction of asyncio's
        # time on each socket read and write.
        uvloop.run(serve_api(up.settings, plan, err))
