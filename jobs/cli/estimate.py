"""`orbatch estimate`: what a file's batch would hold and cost, read as `submit` reads it, and stored nowhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.cli.context import print_json, services
from jobs.cli.options import InputFile, SubmitChoices, with_submit_choices
from jobs.cli.taking import estimate_file
from jobs.cli.terminal import err, estimate_notes, estimate_table, out, say
from jobs.core.settings import Settings, get_settings
from jobs.submission.estimate import Estimate
from jobs.submission.submit import SubmitOptions

__all__ = ["estimate", "estimate_command", "show_estimate"]


def show_estimate(estimate_: Estimate, file: Path, as_json: bool) -> None:
    """The estimate on stdout: one JSON object, or the table and what its numbers assume."""
    if as_json:
        print_json(estimate_.to_json())
        return
    out.print(estimate_table(estimate_, f"{file.name}: {estimate_.requests:,} requests (nothing stored)"))
    for note in estimate_notes(estimate_):
        say(out, note)


def estimate_command(
    settings: Settings, file: Path, options: SubmitOptions, check_models: bool, as_json: bool
) -> None:
    """Estimate FILE under the options on the services in use, and show it."""

    async def go(engine: AsyncEngine) -> Estimate:
        return await estimate_file(engine, settings, file, options, check_models, err)

    with services(settings) as up:
        found = up.run(go, pool_size=2)
    show_estimate(found, file, as_json)


@with_submit_choices
def estimate(
    file: InputFile,
    choices: SubmitChoices,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Read FILE as `submit` would and say what its batch would cost, before anything is paid: requests by
    model, prompt tokens (each model's own tokenizer where orbatch has it), completion tokens at most, the cost
    range live and through OpenRouter's Batch API, the free tier's days. Nothing is stored or queued."""
    settings = get_settings()
    estimate_command(settings, file, choices.options(settings), choices.check_models, as_json)
