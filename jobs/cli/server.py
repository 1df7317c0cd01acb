"""`orbatch serve`: the API on uvicorn, with an arq worker in the same process unless a fleet does the work."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn
from arq.worker import Worker
from rich.console import Console
from sqlalchemy import Connection

from jobs.api.app import create_app
from jobs.api.protocol import GuardedHttpToolsProtocol
from jobs.cli.simulated import start_simulator
from jobs.cli.terminal import say
from jobs.core.db import alembic_config, create_engine
from jobs.core.errors import BadInput, SettingsError
from jobs.core.logs import get_logger
from jobs.core.settings import Settings, is_loopback

__all__ = ["ServePlan", "check_plan", "serve"]

log = get_logger(__name__)

# Requests in flight get this long to finish when the server is stopped.
_GRACEFUL_SECONDS = 30.0


@dataclass(slots=True, frozen=True)
class ServePlan:
    """What `orbatch serve` was asked to do."""

    host: str
    port: int
    no_auth: bool
    worker: bool
    concurrency: int | None
    simulator: bool
    # The embedded Postgres of this run: its schema is brought up to date here.
    embedded_database: bool


def check_plan(settings: Settings, plan: ServePlan) -> None:
    """Refuse what cannot be served safely or at all, before anything starts."""
    if plan.no_auth and not is_loopback(plan.host):
        raise BadInput(
            f"--no-auth is only for a server on a loopback address (127.0.0.1, ::1, localhost), not {plan.host!r}: "
            "anyone who reaches it would act as the owner `local`. Make keys with `orbatch keys create NAME`."
        )
    if plan.worker and not plan.simulator and not settings.openrouter_api_key:
        raise SettingsError(
            "OPENROUTER_API_KEY is not set: the in-process worker needs it to call OpenRouter. Export it, serve "
            "against the local simulator with --simulator, or leave the work to a fleet with --no-worker"
        )


def _schema_current(connection: Connection, database_url: str) -> bool:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
    return MigrationContext.configure(connection).get_current_revision() == head


async def _prepare_database(settings: Settings, plan: ServePlan) -> None:
    if plan.embedded_database:
        # The command that started the embedded Postgres brought it to this orbatch's schema.
        return
    # Several instances may start at once: they check the schema, and one `orbatch db upgrade` migrates it.
    engine = create_engine(settings.database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            current = await conn.run_sync(_schema_current, settings.database_url)
    finally:
        await engine.dispose()
    if not current:
        raise SettingsError(
            "the database at DATABASE_URL is not at this orbatch's schema: run `orbatch db upgrade` first"
        )


class _Server(uvicorn.Server):
    """uvicorn's server, its signals left to `serve`, which stops the in-process worker after it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named outright: asyncio sets TCP_NODELAY only on sockets that say so, and without it every
    # keep-alive answer written in two pieces waits 40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise BadInput(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


async def serve(settings: Settings, plan: ServePlan, err: Console) -> None:
    """Serve until SIGINT or SIGTERM; requests in flight finish, then the in-process worker stops."""
    async with contextlib.AsyncExitStack() as stack:
        if plan.simulator:
            settings = await start_simulator(settings, stack, err)
        await _prepare_database(settings, plan)
        sock = _bind(plan.host, plan.port)
        stack.callback(sock.close)
        config = uvicorn.Config(
            create_app(settings, no_auth=plan.no_auth),
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=int(_GRACEFUL_SECONDS),
            lifespan="on",
            http=GuardedHttpToolsProtocol,
        )
        server = _Server(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, _stop, server)
            stack.callback(loop.remove_signal_handler, sig)
        if plan.worker:
            from worker.runner import build_worker

            worker = build_worker(settings, plan.concurrency)
            task = asyncio.create_task(worker.async_run())
            stack.push_async_callback(_stop_worker, worker, task, settings.shutdown_grace)
        address = sock.getsockname()
        host = f"[{address[0]}]" if ":" in address[0] else address[0]
        sys.stdout.write(f"orbatch serve: listening on http://{host}:{address[1]}\n")
        sys.stdout.flush()
        say(
            err,
            f"dashboard: http://{host}:{address[1]}/; API: http://{host}:{address[1]}/v1 (OpenAPI at "
            "/openapi.json, docs at /docs); metrics at /metrics; "
            + ("no auth: every request acts as `local`; " if plan.no_auth else "keys: `orbatch keys`; ")
            + (
                (
                    "an in-process worker runs the "
                    + ("simulated" if plan.simulator else "real (OpenRouter)")
                    + " batches of this database, made here or by `orbatch submit` (a batch an interrupted "
                    "`orbatch run` left waits for that run, or for `orbatch resume`)"
                )
                if plan.worker
                else "no worker: a fleet runs the batches"
            ),
        )
        await server.serve(sockets=[sock])


def _stop(server: uvicorn.Server) -> None:
    if server.should_exit:
        server.force_exit = True
    server.should_exit = True


async def _stop_worker(worker: Worker, task: asyncio.Task[None], grace: float) -> None:
    """The in-process worker stops as `orbatch worker` does on SIGTERM: its calls in flight finish first."""
    from worker.shutdown import GracefulStop, close_worker

    await GracefulStop(worker, grace).drain()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await close_worker(worker)
