"""The command-line options `submit` and `run` share, as one bundle, and how they become SubmitOptions."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import orjson
import typer

from jobs.core.errors import BadInput
from jobs.core.settings import Settings
from jobs.core.states import BatchPriority, Lane, LongMode
from jobs.formats.input_lines import body_problem
from jobs.formats.prompt_template import Template, load_json_schema, load_template_text
from jobs.submission.choices import batch_options, budget_problem, model_chain
from jobs.submission.submit import SubmitOptions

__all__ = [
    "CheckModels",
    "Dedupe",
    "DryRun",
    "FreeOnly",
    "InputFile",
    "JsonSchema",
    "LaneChoice",
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
    "SubmitChoices",
    "System",
    "Temperature",
    "TemplateText",
    "UsageError",
    "parse_usd",
    "with_submit_choices",
]

InputFile = Annotated[
    Path,
    typer.Argument(
        exists=True,
        dir_okay=False,
        readable=True,
        help="JSONL of chat requests, or plain records with --template: JSONL (gzip-compressed is fine), "
        ".csv or .parquet.",
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
LaneChoice = Annotated[
    Lane,
    typer.Option(
        "--lane",
        help="live (the default): call OpenRouter for each request now. batch: send the requests through "
        "OpenRouter's Batch API, at its batch price (about half), answered in minutes to 24 h; what it fails "
        "or cannot take runs live. auto: the Batch API for requests whose first model has a batch variant, "
        "live for the rest.",
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
Feedback = Annotated[
    bool,
    typer.Option(
        "--feedback/--no-feedback",
        help="Retry a reply that fails its JSON schema with a turn saying what was wrong (on by default).",
    ),
]
Heal = Annotated[
    bool,
    typer.Option(
        "--heal", help="Ask OpenRouter's response-healing plugin to repair malformed JSON in schema replies."
    ),
]
Vote = Annotated[
    str | None,
    typer.Option(
        "--vote",
        metavar="MODELS",
        help="Send each record to every one of these models (comma-separated; all of them, not a fallback "
        "chain) and keep the majority of each label field (enum, boolean, integer), the models' agreement and "
        "each one's answer.",
    ),
]
Gold = Annotated[
    str | None,
    typer.Option(
        "--gold",
        metavar="FIELD",
        help="The record field holding the right answer: the dashboard's batch page scores the answers against "
        "it (orbatch score does it for any batch of records).",
    ),
]
LongChoice = Annotated[
    LongMode | None,
    typer.Option(
        "--long",
        help="split: a record too long for every model of the chain is summarised in parts (its longest field "
        "cut into overlapping chunks, each summarised, the summaries combined) instead of being a bad line.",
        case_sensitive=False,
    ),
]
LongField = Annotated[
    str | None,
    typer.Option(
        "--long-field",
        help="With --long split: the record field to cut (a.b for a nested one); default: the longest string "
        "field the template uses.",
    ),
]
ReplaceModels = Annotated[
    bool,
    typer.Option(
        "--replace-models",
        help="Send every line to the --models chain, whatever model the line names (a file written for other "
        "models, OpenAI's say).",
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
Embed = Annotated[
    bool,
    typer.Option(
        "--embed",
        help="With --template: each record's filled template is text to embed (an embeddings batch, "
        "answered with vectors), not a prompt.",
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


DryRun = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="Store and run nothing: read FILE as submit does and print what it would cost (as `orbatch "
        "estimate`).",
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
    problem = budget_problem(amount)
    if problem:
        raise UsageError(f"{option} {problem}, got {value!r}")
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


@dataclass(slots=True, frozen=True)
class SubmitChoices:
    """The options `submit` and `run` share, as typed; `with_submit_choices` puts them on a command."""

    models: Models = None
    name: Name = None
    max_attempts: MaxAttempts = None
    free_only: FreeOnly = False
    max_cost: MaxCost = None
    skip_invalid: SkipInvalid = False
    check_models: CheckModels = True
    new: New = False
    dedupe: Dedupe = False
    feedback: Feedback = True
    heal: Heal = False
    vote: Vote = None
    gold: Gold = None
    long: LongChoice = None
    long_field: LongField = None
    replace_models: ReplaceModels = False
    template: TemplateText = None
    embed: Embed = False
    system: System = None
    json_schema: JsonSchema = None
    temperature: Temperature = None
    max_tokens: MaxTokens = None
    params: Params = None
    metadata: Metadata = None
    priority: Priority = None
    lane: LaneChoice = Lane.LIVE

    def options(self, settings: Settings) -> SubmitOptions:
        """The SubmitOptions they mean, checked; UsageError (or TemplateError) says what is wrong."""
        try:
            chain = model_chain(self.models or None, "--models")
            voters = model_chain(self.vote, "--vote") if self.vote is not None else []
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if self.template is None and (self.system is not None or self.json_schema is not None):
            raise UsageError("--system and --json-schema go with --template (a file of plain records)")
        if self.embed and self.template is None:
            raise UsageError("--embed goes with --template: it makes each record's text to embed")
        if voters and chain:
            raise UsageError("--vote or --models, not both: a vote sends each record to every model it names")
        if self.long_field is not None and self.long is None:
            raise UsageError(
                "--long-field goes with --long split: it names the field a long record is cut in"
            )
        if self.long is not None and self.template is None:
            raise UsageError(
                "--long split goes with --template: it cuts a record's field, and a chat line has none"
            )
        if self.replace_models and not chain:
            raise UsageError("--replace-models needs --models: the chain every line is sent to")
        parsed: Template | None = None
        if self.template is not None:
            if not chain and not voters:
                raise UsageError("--template needs --models (or --vote): plain records name no model")
            path = self.json_schema
            schema = load_json_schema(path) if path is not None else None
            stem = path.stem if path is not None else ""
            parsed = Template.parse(
                load_template_text(self.template), self.system, schema, schema_name=stem, embed=self.embed
            )
        return batch_options(
            settings,
            models=chain,
            name=self.name,
            max_attempts=self.max_attempts,
            free_only=self.free_only,
            max_cost=parse_usd(self.max_cost, "--max-cost") if self.max_cost is not None else None,
            dedupe=self.dedupe,
            priority=self.priority,
            new=self.new,
            skip_invalid=self.skip_invalid,
            template=parsed,
            defaults=body_defaults(self.temperature, self.max_tokens, self.params),
            metadata=batch_metadata(self.metadata),
            replace_models=self.replace_models,
            lane=self.lane,
            feedback=self.feedback,
            heal=self.heal,
            vote=voters,
            gold=self.gold,
            long=None if self.long is None else self.long.value,
            long_field=self.long_field,
        )


def with_submit_choices(command: Callable[..., None]) -> Callable[..., None]:
    """The command with every SubmitChoices option where its `choices` parameter is (so `--help` lists them in
    that place), called with them gathered as `choices`."""
    signature = inspect.signature(command, eval_str=True)
    hints = get_type_hints(SubmitChoices, include_extras=True)
    bundle = [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name])
        for f in fields(SubmitChoices)
    ]
    if "choices" not in signature.parameters:
        raise TypeError(f"{command.__name__} takes no `choices`")
    parameters: list[inspect.Parameter] = []
    for parameter in signature.parameters.values():
        # Keyword-only: Typer calls with keywords, and the options' defaults may then precede an argument.
        if parameter.name == "choices":
            parameters.extend(bundle)
        else:
            parameters.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))

    @functools.wraps(command)
    def with_choices(**given: Any) -> None:
        chosen = SubmitChoices(**{f.name: given.pop(f.name) for f in fields(SubmitChoices)})
        command(choices=chosen, **given)

    # Typer reads a command's parameters from its signature and type hints.
    setattr(with_choices, "__signature__", signature.replace(parameters=parameters))  # noqa: B010
    with_choices.__annotations__ = {p.name: p.annotation for p in parameters}
    with_choices.__annotations__["return"] = signature.return_annotation
    return with_choices
