"""What a submitter chose, as the one SubmitOptions the CLI's `submit`/`run` and the API's create both build."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from jobs.core.constants import MAX_COST_DECIMAL_PLACES, MAX_COST_USD
from jobs.core.settings import Settings
from jobs.core.states import BatchPriority, Lane
from jobs.formats.input_lines import parse_models
from jobs.formats.prompt_template import Template
from jobs.submission.submit import SubmitOptions

__all__ = ["batch_options", "budget_problem", "model_chain"]


def model_chain(value: list[str] | str | None, option: str) -> list[str]:
    """A fallback chain as given (a list, or ids separated by commas; None for none); ValueError naming `option`
    for a bad one (an empty one included)."""
    if value is None:
        return []
    items = [m for m in value.split(",") if m.strip()] if isinstance(value, str) else value
    return parse_models(items, option)


def budget_problem(amount: Decimal) -> str | None:
    """What is wrong with a budget in USD (not above zero, past a billion, finer than 12 decimals), or None."""
    if not amount.is_finite() or amount <= 0:
        return "must be more than zero"
    if amount > MAX_COST_USD:
        return f"must be at most {MAX_COST_USD:,} USD"
    if -amount.as_tuple().exponent > MAX_COST_DECIMAL_PLACES:  # type: ignore[operator]
        return f"must have at most {MAX_COST_DECIMAL_PLACES} decimal places"
    return None


def batch_options(
    settings: Settings,
    *,
    models: list[str],
    max_attempts: int | None,
    free_only: bool,
    max_cost: Decimal | None,
    dedupe: bool,
    priority: BatchPriority | None,
    new: bool,
    name: str | None = None,
    skip_invalid: bool = False,
    template: Template | None = None,
    defaults: dict[str, Any] | None = None,
    metadata: dict[str, str] | None = None,
    owner: str | None = None,
    replace_models: bool = False,
    endpoint: str | None = None,
    lane: Lane | None = None,
    window_seconds: int | None = None,
    feedback: bool = True,
    heal: bool = False,
    vote: list[str] | None = None,
    gold: str | None = None,
    long: str | None = None,
    long_field: str | None = None,
) -> SubmitOptions:
    """The options of a batch from choices already checked by the surface that took them; a setting fills
    what was not chosen (ORBATCH_MAX_ATTEMPTS)."""
    return SubmitOptions(
        models=models,
        name=name,
        max_attempts=max_attempts or settings.max_attempts,
        skip_invalid=skip_invalid,
        free_only=free_only,
        max_cost=max_cost,
        new=new,
        dedupe=dedupe,
        template=template,
        defaults=defaults or {},
        metadata=metadata,
        owner=owner,
        priority=priority,
        replace_models=replace_models,
        endpoint=endpoint,
        lane=lane or Lane.LIVE,
        window_seconds=window_seconds,
        feedback=feedback,
        heal=heal,
        vote=vote or [],
        gold=gold,
        long=long,
        long_field=long_field,
    )
