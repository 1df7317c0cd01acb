"""`orbatch estimate`: what a file's batch would hold and cost, read as `submit` reads it, and stored nowhere."""

from __future__ import annotations

from typing import Annotated

import typer

from jobs.cli.options import InputFile, SubmitChoices, with_submit_choices
from jobs.cli.taking import estimate_command
from jobs.core.settings import get_settings

__all__ = ["estimate"]


@with_submit_choices
def estimate(
    file: InputFile,
    choices: SubmitChoices,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    use_simulator: Annotated[
        bool,
        typer.Option(
            "--simulator",
            help="Price from a local OpenRouter simulator's model list, as `run --simulator` would run the "
            "file (no key, no network).",
        ),
    ] = False,
) -> None:
    """Read FILE as `submit` would and say what its batch would cost, before anything is paid: requests by
    model, prompt tokens (OpenAI's models with their own tokenizer), completion tokens at most, the cost range
    live and through OpenRouter's Batch API, the free tier's days. Nothing is stored or queued."""
    settings = get_settings()
    estimate_command(settings, file, choices.options(settings), choices.check_models, as_json, use_simulator)
