"""What the upstream offers: `models` lists OpenRouter's catalogue; `simulator` serves a local stand-in."""

from __future__ import annotations

import asyncio
from typing import Annotated

import httpx
import orjson
import typer

from jobs.cli.context import print_json
from jobs.cli.model_rows import model_rows, render_table, rows_json, shipped_rows, simulator_rows
from jobs.cli.terminal import err, out, say, say_warning
from jobs.core.logs import redact
from jobs.core.settings import get_settings
from jobs.simulator.main import simulator_command

__all__ = ["models", "simulator_command"]


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
    settings = get_settings()
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
        print_json(rows_json(rows))
    else:
        out.print(render_table(rows, source))
