"""The `orbatch` Typer app: every command module's commands in their places, and `main`, the one mapping
of errors to messages and exit statuses."""

from __future__ import annotations

import importlib.metadata
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Annotated

import typer
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError

from jobs.cli import admin, batches, estimate, keys, run, score, serve, upstream, workers
from jobs.cli.terminal import err, say, say_error
from jobs.core.errors import Interrupted, OrbatchError, ServiceUnavailable, SettingsError
from jobs.core.logs import configure_logging, redact
from jobs.core.settings import get_settings

__all__ = ["COMMAND_MODULES", "app", "main"]

app = typer.Typer(
    name="orbatch",
    help="Batch chat completions through OpenRouter: JSONL in, Postgres as the record, JSONL out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Every module that holds commands; a test checks that each of their commands is on the app.
COMMAND_MODULES: tuple[ModuleType, ...] = (
    admin,
    batches,
    estimate,
    keys,
    run,
    score,
    serve,
    upstream,
    workers,
)

# The order `orbatch --help` lists them in.
_GROUPS: tuple[tuple[str, typer.Typer], ...] = (("db", admin.db_app), ("keys", keys.keys_app))
_COMMANDS: tuple[tuple[str, Callable[..., None]], ...] = (
    ("submit", batches.submit),
    ("estimate", estimate.estimate),
    ("run", run.run),
    ("worker", workers.worker),
    ("workers", workers.workers),
    ("status", batches.status),
    ("results", batches.results),
    ("usage", batches.usage),
    ("score", score.score),
    ("resume", batches.resume),
    ("cancel", batches.cancel),
    ("priority", batches.set_priority),
    ("retry", batches.retry),
    ("delete", batches.delete),
    ("simulator", upstream.simulator_command),
    ("serve", serve.serve),
    ("models", upstream.models),
)
for _name, _group in _GROUPS:
    app.add_typer(_group, name=_name)
for _name, _command in _COMMANDS:
    app.command(_name)(_command)


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
