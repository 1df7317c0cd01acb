"""The command-line options `submit` and `run` share, and how they become SubmitOptions."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from jobs.core.errors import BadInput
from jobs.core.states import BatchPriority
from jobs.formats.input_lines import body_problem, parse_models
from jobs.formats.prompt_template import Template, load_json_schema, load_template_text
from jobs.submission.submit import SubmitOptions

__all__ = [
    "CheckModels",
    "Dedupe",
    "FreeOnly",
    "InputFile",
    "JsonSchema",
    "MaxAttempts",
    "MaxCost",
    "MaxTokens",
    "Metadata",
    "Models",
    "Name",
    "New",
    "Params",
    "Priority",
    "SkipInvalid",
    "System",
    "Temperature",
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
Priority = Annotated[
    BatchPriority | None,
    typer.Option(
        "--priority",
        help="urgent: runs before every normal batch; background: yields to every normal one; normal (the "
        "default): the fleet's fair share, between owners and then between an owner's batches. Given for a "
        "file already submitted, it changes that batch's.",
        show_default="normal",
    ),
]
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
Temperature = Annotated[
    float | None, typer.Option(help="Sampling temperature for every request (a line's own value wins).")
]
MaxTokens = Annotated[
    int | None, typer.Option(min=1, help="max_tokens for every request (a line's own value wins).")
]
Params = Annotated[
    list[str] | None,
    typer.Option(
        "--param",
        help="A body parameter for every request, KEY=VALUE (VALUE read as JSON when it is JSON, else as text), "
        "e.g. --param top_p=0.9 --param 'stop=[\"###\"]'. Repeatable; a line's own value wins.",
    ),
]
Metadata = Annotated[
    list[str] | None,
    typer.Option("--metadata", help="A label for the batch, KEY=VALUE, shown by `status`. Repeatable."),
]
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


# Parameters a default cannot set: they are the request itself, or have their own option.
_NOT_DEFAULTS = {"messages", "model", "models", "custom_id", "stream", "response_format"}


def _pairs(values: list[str] | None, option: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values or []:
        key, sep, rest = value.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{option} takes KEY=VALUE, got {value!r}")
        pairs.append((key.strip(), rest))
    return pairs


def body_defaults(
    temperature: float | None, max_tokens: int | None, params: list[str] | None
) -> dict[str, Any]:
    """The body parameters every request gets unless its line sets them; UsageError names a bad one."""
    defaults: dict[str, Any] = {}
    for key, raw in _pairs(params, "--param"):
        if key in _NOT_DEFAULTS:
            raise UsageError(f"--param {key}=...: {key!r} cannot be a default for every request")
        try:
            defaults[key] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            defaults[key] = raw
    if temperature is not None:
        defaults["temperature"] = temperature
    if max_tokens is not None:
        defaults["max_tokens"] = max_tokens
    problem = body_problem({"messages": [{"role": "user", "content": "x"}], **defaults})
    if problem:
        raise UsageError(f"--param/--temperature/--max-tokens: {problem}")
    return defaults


def batch_metadata(values: list[str] | None) -> dict[str, str] | None:
    """`--metadata k=v` pairs as the batch's labels."""
    pairs = _pairs(values, "--metadata")
    return dict(pairs) if pairs else None


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
    temperature: float | None = None,
    max_tokens: int | None = None,
    params: list[str] | None = None,
    metadata: list[str] | None = None,
    priority: BatchPriority | None = None,
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
        defaults=body_defaults(temperature, max_tokens, params),
        metadata=batch_metadata(metadata),
        priority=priority,
    )
