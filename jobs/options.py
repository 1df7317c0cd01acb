"""The command-line options `submit` and `run` share, and how they become SubmitOptions."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated

import typer

from jobs.errors import BadInput
from jobs.input_format import parse_models
from jobs.submit import SubmitOptions
from jobs.templates import Template, load_json_schema, load_template_text

__all__ = [
    "CheckModels",
    "Dedupe",
    "FreeOnly",
    "InputFile",
    "JsonSchema",
    "MaxAttempts",
    "MaxCost",
    "Models",
    "Name",
    "New",
    "SkipInvalid",
    "System",
    "TemplateText",
    "UsageError",
    "parse_usd",
    "submit_options",
]

InputFile = Annotated[
    Path,
    typer.Argument(
        exists=True,
        dir_okay=False,
        readable=True,
        help="JSONL of chat requests, or of plain records with --template (gzip-compressed is fine).",
    ),
]
Models = Annotated[
    str | None,
    typer.Option("--models", "-m", help="Fallback chain for lines without their own, comma-separated."),
]
Name = Annotated[str | None, typer.Option(help="A name to find the batch by.")]
MaxAttempts = Annotated[int | None, typer.Option(min=1, max=100, help="Failed calls before a request fails.")]
FreeOnly = Annotated[bool, typer.Option("--free-only", help="Refuse any model that is not a :free variant.")]
MaxCost = Annotated[
    str | None, typer.Option("--max-cost", help="Stop the batch once its spend reaches this many USD.")
]
SkipInvalid = Annotated[bool, typer.Option(help="Queue the good lines of a file with bad ones.")]
CheckModels = Annotated[
    bool, typer.Option(help="Check model ids against OpenRouter's model list (GET /models).")
]
New = Annotated[
    bool, typer.Option("--new", help="A new batch even if this file was submitted with these options.")
]
Dedupe = Annotated[
    bool,
    typer.Option(
        "--dedupe", help="Answer requests identical to one already answered from its stored result."
    ),
]
TemplateText = Annotated[
    str | None,
    typer.Option(
        "--template",
        "-t",
        help="Lines are plain records: fill this template (a file, or the text itself) with each record's "
        "{field}s to make its one user message.",
    ),
]
System = Annotated[str | None, typer.Option("--system", help="A system message before each templated one.")]
JsonSchema = Annotated[
    Path | None,
    typer.Option(
        "--json-schema",
        exists=True,
        dir_okay=False,
        readable=True,
        help="Ask for JSON following this JSON Schema; a reply that does not follow it is retried.",
    ),
]


class UsageError(BadInput):
    """An option value that cannot be used; the message names the option."""


def parse_usd(value: str, option: str) -> Decimal:
    """An amount in USD greater than zero."""
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise UsageError(f"{option} must be an amount in USD such as 2.50, got {value!r}") from None
    if not amount.is_finite() or amount <= 0:
        raise UsageError(f"{option} must be more than zero, got {value!r}")
    return amount


def submit_options(
    *,
    models: str | None,
    name: str | None,
    max_attempts: int,
    free_only: bool,
    max_cost: str | None,
    skip_invalid: bool,
    new: bool,
    dedupe: bool,
    template: str | None,
    system: str | None,
    json_schema: Path | None,
) -> SubmitOptions:
    """The options as typed on the command line, checked; UsageError (or TemplateError) says what is wrong."""
    try:
        chain = (
            parse_models([m for m in (models or "").split(",") if m.strip()], "--models") if models else []
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if template is None and (system is not None or json_schema is not None):
        raise UsageError("--system and --json-schema go with --template (a file of plain records)")
    parsed: Template | None = None
    if template is not None:
        if not chain:
            raise UsageError("--template needs --models: plain records name no model")
        schema = load_json_schema(json_schema) if json_schema is not None else None
        stem = json_schema.stem if json_schema is not None else ""
        parsed = Template.parse(load_template_text(template), system, schema, schema_name=stem)
    return SubmitOptions(
        models=chain,
        name=name,
        max_attempts=max_attempts,
        skip_invalid=skip_invalid,
        free_only=free_only,
        max_cost=parse_usd(max_cost, "--max-cost") if max_cost is not None else None,
        new=new,
        dedupe=dedupe,
        template=parsed,
    )
