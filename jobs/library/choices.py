"""What a Python caller chose, with the CLI's names and meanings, as the SubmitOptions a batch is made with."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import BaseModel

from jobs.core.errors import BadInput
from jobs.core.settings import Settings
from jobs.core.states import BatchPriority, Lane
from jobs.formats.input_lines import body_problem
from jobs.formats.prompt_template import Template, TemplateError, load_template_text
from jobs.library.schemas import answer_schema, schema_name
from jobs.submission.choices import batch_options, budget_problem, model_chain
from jobs.submission.submit import SubmitOptions

__all__ = ["Choices"]

# Parameters a default cannot set: they are the request itself, or have their own option.
_NOT_DEFAULTS = {"messages", "model", "models", "custom_id", "stream", "response_format"}


def _usd(value: str | float | Decimal | None) -> Decimal | None:
    if value is None:
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise BadInput(
            f"max_cost= must be an amount in USD such as 2.50, got {value!r}", param="max_cost"
        ) from None
    problem = budget_problem(amount)
    if problem:
        raise BadInput(f"max_cost= {problem}, got {value!r}", param="max_cost")
    return amount


@dataclass(slots=True, frozen=True)
class Choices:
    """The keyword options of `orbatch.run` and `orbatch.submit` (see their docstrings)."""

    template: str | None = None
    embed: bool = False
    system: str | None = None
    schema: type[BaseModel] | dict[str, Any] | None = None
    models: list[str] | str | None = None
    name: str | None = None
    max_attempts: int | None = None
    max_cost: str | float | Decimal | None = None
    free_only: bool = False
    dedupe: bool = False
    feedback: bool = True
    heal: bool = False
    vote: list[str] | str | None = None
    gold: str | None = None
    long: str | None = None
    long_field: str | None = None
    replace_models: bool = False
    temperature: float | None = None
    max_tokens: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, str] | None = None
    new: bool = False
    priority: str | None = None
    lane: str | None = None
    skip_invalid: bool = False
    check_models: bool = True
    simulator: bool = False

    def json_schema(self) -> dict[str, Any] | None:
        """The schema answers must follow, as sent."""
        return answer_schema(self.schema)

    def options(self, settings: Settings, records: bool) -> SubmitOptions:
        """The batch's SubmitOptions; BadInput names the option that cannot be used.

        `records`: the data are plain records (a template makes each one's request), not chat requests.
        """
        try:
            chain = model_chain(self.models, "models=")
        except ValueError as exc:
            raise BadInput(str(exc), param="models") from None
        try:
            voters = model_chain(self.vote, "vote=")
        except ValueError as exc:
            raise BadInput(str(exc), param="vote") from None
        if voters and chain:
            raise BadInput(
                "vote= or models=, not both: a vote sends each row to every model it names", param="vote"
            )
        schema = self.json_schema()
        template: Template | None = None
        if self.template is None and (self.system is not None or schema is not None):
            raise BadInput("system= and schema= go with template= (records that fill it)", param="template")
        if self.embed and self.template is None:
            raise BadInput(
                "embed= goes with template= (records whose filled template is embedded)", param="embed"
            )
        if self.template is not None:
            if not chain and not voters:
                raise BadInput(
                    "template= needs models= (or vote=): plain records name no model", param="models"
                )
            try:
                template = Template.parse(
                    load_template_text(self.template),
                    self.system,
                    schema,
                    schema_name=schema_name(self.schema),
                    embed=self.embed,
                )
            except TemplateError as exc:
                raise BadInput(str(exc).replace("--template", "template="), param="template") from None
        elif records:
            raise BadInput(
                "the rows are records, not chat requests (no `messages`): give template= to make each row's "
                "prompt, e.g. template='Label this review: {text}'",
                param="template",
            )
        if self.max_attempts is not None and not 1 <= self.max_attempts <= 100:
            raise BadInput(f"max_attempts= must be 1 to 100, got {self.max_attempts}", param="max_attempts")
        try:
            priority = None if self.priority is None else BatchPriority(self.priority)
        except ValueError:
            choices = ", ".join(p.value for p in BatchPriority)
            raise BadInput(
                f"priority= must be one of {choices}, got {self.priority!r}", param="priority"
            ) from None
        try:
            lane = None if self.lane is None else Lane(self.lane)
        except ValueError:
            words = ", ".join(x.value for x in Lane)
            raise BadInput(f"lane= must be one of {words}, got {self.lane!r}", param="lane") from None
        return batch_options(
            settings,
            models=chain,
            name=self.name,
            max_attempts=self.max_attempts,
            free_only=self.free_only,
            max_cost=_usd(self.max_cost),
            dedupe=self.dedupe,
            priority=priority,
            new=self.new,
            skip_invalid=self.skip_invalid,
            template=template,
            defaults=self._defaults(),
            metadata={str(k): str(v) for k, v in self.metadata.items()} if self.metadata else None,
            replace_models=self.replace_models,
            lane=lane,
            feedback=self.feedback,
            heal=self.heal,
            vote=voters,
            gold=self.gold,
            long=self._long(),
            long_field=self.long_field,
        )

    def _long(self) -> str | None:
        if self.long not in (None, "split"):
            raise BadInput(f"long= must be 'split' (or None), got {self.long!r}", param="long")
        return self.long

    def _defaults(self) -> dict[str, Any]:
        defaults: dict[str, Any] = {}
        for key, value in self.params.items():
            if key in _NOT_DEFAULTS:
                raise BadInput(
                    f"params={{{key!r}: ...}}: {key!r} cannot be a default for every request", param="params"
                )
            defaults[key] = value
        if self.temperature is not None:
            defaults["temperature"] = self.temperature
        if self.max_tokens is not None:
            defaults["max_tokens"] = self.max_tokens
        problem = body_problem({"messages": [{"role": "user", "content": "x"}], **defaults})
        if problem:
            raise BadInput(f"params=/temperature=/max_tokens=: {problem}", param="params")
        return defaults
