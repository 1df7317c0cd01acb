"""What a batch will take before it is paid: its requests' tokens by model, priced by lane, and free-tier days.

The tokens come from submit's own reading of the file (`ModelTokens`); this module prices them with the
catalogue (`GET /models`): the live lane at the model's own price, OpenRouter's Batch API at its `:batch`
variant's (about half, where the catalogue lists one). A range, from the prompt alone (answers of no length)
to the prompt and every request's whole completion bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import orjson

from jobs.core.constants import CREDITED_DAILY_REQUESTS, FREE_TIER_DAILY_REQUESTS
from jobs.core.settings import Settings
from jobs.formats.tokens import tokenizer_for
from jobs.submission.catalog import Catalog, ModelPrices
from jobs.submission.submit import ModelTokens

__all__ = [
    "CostRange",
    "Estimate",
    "FreeQuota",
    "FreeTier",
    "LaneCost",
    "ModelEstimate",
    "batch_variant",
    "free_quota",
    "price",
]

FREE_SUFFIX = ":free"
BATCH_SUFFIX = ":batch"


@dataclass(slots=True, frozen=True)
class CostRange:
    """USD from the prompt alone (`low`) to the prompt and every completion bound spent (`high`)."""

    low: Decimal
    high: Decimal

    def __add__(self, other: CostRange) -> CostRange:
        return CostRange(self.low + other.low, self.high + other.high)

    def contains(self, cost: Decimal) -> bool:
        """Whether `cost` lies in the range."""
        return self.low <= cost <= self.high

    def to_json(self) -> dict[str, str]:
        """Decimal strings, as `usage --json` gives costs."""
        return {"low": f"{self.low:f}", "high": f"{self.high:f}"}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CostRange:
        """The range `to_json` wrote."""
        return cls(Decimal(data["low"]), Decimal(data["high"]))


@dataclass(slots=True, frozen=True)
class LaneCost:
    """What one lane charges for a model's requests: the catalogue id whose price it is, and the range."""

    price_id: str
    cost: CostRange

    def to_json(self) -> dict[str, Any]:
        """`{"price_id", "low", "high"}`."""
        return {"price_id": self.price_id, **self.cost.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> LaneCost | None:
        """The lane `to_json` wrote; None for none."""
        return None if data is None else cls(str(data["price_id"]), CostRange.from_json(data))


@dataclass(slots=True, frozen=True)
class ModelEstimate:
    """One model's share: its requests, their tokens, and their cost by lane (None: no price for that lane)."""

    model: str
    requests: int
    prompt_tokens: int
    # The completion tokens the requests may take: their own bounds, and the default for those with none.
    completion_tokens: int
    # Requests that set no max_tokens, counted at the default.
    completion_assumed: int
    tokenizer: str
    exact: bool
    free: bool
    # The model's own price (calls made one by one); None when the catalogue does not price it.
    live: LaneCost | None
    # OpenRouter's Batch API, at the `:batch` variant's price; None where the catalogue has no such variant.
    batch: LaneCost | None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON."""
        return {
            "model": self.model,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "completion_assumed": self.completion_assumed,
            "tokenizer": self.tokenizer,
            "exact": self.exact,
            "free": self.free,
            "live": None if self.live is None else self.live.to_json(),
            "batch": None if self.batch is None else self.batch.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelEstimate:
        """The model's share `to_json` wrote."""
        return cls(
            model=str(data["model"]),
            requests=int(data["requests"]),
            prompt_tokens=int(data["prompt_tokens"]),
            completion_tokens=int(data["completion_tokens"]),
            completion_assumed=int(data["completion_assumed"]),
            tokenizer=str(data["tokenizer"]),
            exact=bool(data["exact"]),
            free=bool(data["free"]),
            live=LaneCost.from_json(data.get("live")),
            batch=LaneCost.from_json(data.get("batch")),
        )


@dataclass(slots=True, frozen=True)
class FreeQuota:
    """The free tier's daily requests, and where that number came from."""

    per_day: int
    source: str


@dataclass(slots=True, frozen=True)
class FreeTier:
    """Requests bound for free models, and the days of quota they need (None: the quota is not known)."""

    requests: int
    per_day: int | None
    days: int | None
    source: str | None

    def describe(self) -> str:
        """`300 free requests need 6 days of quota at 50 a day (GET /key)`."""
        if self.per_day is None or self.days is None:
            return f"{self.requests} free requests (the daily quota was not read)"
        if self.per_day == 0:
            return f"{self.requests} free requests, and a quota of none a day ({self.source}): they never run"
        plural = "s" if self.days != 1 else ""
        return (
            f"{self.requests} free requests need {self.days} day{plural} of quota at {self.per_day} a day "
            f"({self.source})"
        )

    def to_json(self) -> dict[str, Any]:
        """Plain JSON."""
        return {"requests": self.requests, "per_day": self.per_day, "days": self.days, "source": self.source}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FreeTier:
        """The free tier's share `to_json` wrote."""
        return cls(int(data["requests"]), data.get("per_day"), data.get("days"), data.get("source"))


@dataclass(slots=True, frozen=True)
class Estimate:
    """A batch before it runs: requests by model, prompt and completion tokens, cost by lane, free-tier days."""

    requests: int
    invalid: int
    models: list[ModelEstimate]
    # The completion tokens assumed for a request that sets no max_tokens (ORBATCH_ESTIMATE_COMPLETION_TOKENS).
    completion_default: int
    free_tier: FreeTier
    # The catalogue was read: without it no model has a price.
    priced: bool
    # The first bad lines left out (`--skip-invalid`), as `LINE N: ...`.
    skipped: tuple[str, ...] = ()

    @property
    def prompt_tokens(self) -> int:
        """Every request's prompt tokens."""
        return sum(m.prompt_tokens for m in self.models)

    @property
    def completion_tokens(self) -> int:
        """The completion tokens every request may take."""
        return sum(m.completion_tokens for m in self.models)

    @property
    def completion_assumed(self) -> int:
        """Requests counted at the default completion bound."""
        return sum(m.completion_assumed for m in self.models)

    @property
    def exact(self) -> bool:
        """Every prompt was counted with its model's own tokenizer."""
        return all(m.exact for m in self.models)

    def lane(self, name: str) -> CostRange | None:
        """The whole batch's cost on a lane (`live` or `batch`); None when a model has no price there."""
        total = CostRange(Decimal(0), Decimal(0))
        for model in self.models:
            cost: LaneCost | None = getattr(model, name)
            if cost is None:
                return None
            total += cost.cost
        return total

    @property
    def live(self) -> CostRange | None:
        """The cost with every call made at once, at the models' own prices."""
        return self.lane("live")

    @property
    def batch(self) -> CostRange | None:
        """The cost through OpenRouter's Batch API; None unless every model has a `:batch` variant."""
        return self.lane("batch")

    def to_json(self) -> dict[str, Any]:
        """`orbatch estimate --json`'s object, and what a batch keeps of its estimate."""
        live, batch = self.live, self.batch
        return {
            "object": "batch.estimate",
            "requests": self.requests,
            "invalid": self.invalid,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "completion_assumed": self.completion_assumed,
            "completion_default": self.completion_default,
            "exact": self.exact,
            "priced": self.priced,
            "cost": {
                "live": None if live is None else live.to_json(),
                "batch": None if batch is None else batch.to_json(),
            },
            "free_tier": self.free_tier.to_json(),
            "models": [m.to_json() for m in self.models],
            "skipped": list(self.skipped),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Estimate:
        """The estimate `to_json` wrote (a batch's kept one)."""
        return cls(
            requests=int(data["requests"]),
            invalid=int(data.get("invalid", 0)),
            models=[ModelEstimate.from_json(m) for m in data["models"]],
            completion_default=int(data["completion_default"]),
            free_tier=FreeTier.from_json(data["free_tier"]),
            priced=bool(data.get("priced", True)),
            skipped=tuple(str(line) for line in data.get("skipped", [])),
        )


def batch_variant(model: str) -> str | None:
    """The id OpenRouter's Batch API prices a model's requests by: its `:batch` variant. None for a free
    variant: the Batch API has no free models."""
    base, colon, variant = model.partition(":")
    if colon and variant == "free":
        return None
    return base + BATCH_SUFFIX


def _lane(
    price_id: str | None, catalog: Catalog | None, tokens: ModelTokens, completion: int
) -> LaneCost | None:
    if price_id is None or catalog is None or price_id not in catalog:
        return None
    prices: ModelPrices = catalog[price_id]
    if prices.prompt is None or prices.completion is None:
        # A router's price is not known in advance ("-1" in the catalogue).
        return None
    low = prices.prompt * tokens.prompt_tokens + (prices.request or Decimal(0)) * tokens.requests
    return LaneCost(price_id, CostRange(low, low + prices.completion * completion))


def price(
    tokens: list[ModelTokens],
    catalog: Catalog | None,
    *,
    completion_default: int,
    quota: FreeQuota | None,
    invalid: int = 0,
    skipped: list[str] | None = None,
) -> Estimate:
    """The estimate of requests holding `tokens`, at the catalogue's prices (None: not read, nothing priced);
    a request with no max_tokens is allowed `completion_default` tokens."""
    models: list[ModelEstimate] = []
    for t in tokens:
        free = t.model.endswith(FREE_SUFFIX)
        completion = t.completion_tokens + t.unbounded * completion_default
        tokenizer = tokenizer_for(t.model)
        live = _lane(t.model, catalog, t, completion)
        if free and live is None:
            # A free variant costs nothing whether or not the catalogue was read.
            live = LaneCost(t.model, CostRange(Decimal(0), Decimal(0)))
        models.append(
            ModelEstimate(
                model=t.model,
                requests=t.requests,
                prompt_tokens=t.prompt_tokens,
                completion_tokens=completion,
                completion_assumed=t.unbounded,
                tokenizer=tokenizer.describe(),
                exact=tokenizer.exact,
                free=free,
                live=live,
                batch=_lane(batch_variant(t.model), catalog, t, completion),
            )
        )
    free_requests = sum(m.requests for m in models if m.free)
    days = None
    if quota is not None and quota.per_day > 0:
        days = math.ceil(free_requests / quota.per_day)
    return Estimate(
        requests=sum(t.requests for t in tokens),
        invalid=invalid,
        models=models,
        completion_default=completion_default,
        free_tier=FreeTier(
            requests=free_requests,
            per_day=None if quota is None else quota.per_day,
            days=days,
            source=None if quota is None else quota.source,
        ),
        priced=catalog is not None,
        skipped=tuple(skipped or ()),
    )


async def free_quota(settings: Settings) -> FreeQuota:
    """The free tier's daily requests as the workers will apply them: ORBATCH_FREE_REQUESTS_PER_DAY when set,
    else what the upstream's `GET /key` says (a simulator's own quota; 1000 for an account that bought credits,
    else 50), else a free account's 50."""
    if settings.free_requests_per_day is not None:
        return FreeQuota(settings.free_requests_per_day, "ORBATCH_FREE_REQUESTS_PER_DAY")
    key = settings.openrouter_api_key.get_secret_value() if settings.openrouter_api_key else None
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        async with httpx.AsyncClient(
            base_url=settings.openrouter_base_url.rstrip("/") + "/", timeout=5.0, headers=headers
        ) as client:
            response = await client.get("key")
            response.raise_for_status()
        data = orjson.loads(response.content).get("data")
    except (httpx.HTTPError, orjson.JSONDecodeError, AttributeError):
        data = None
    if not isinstance(data, dict):
        return FreeQuota(FREE_TIER_DAILY_REQUESTS, "a free account's, assumed: GET /key did not answer")
    simulator = data.get("simulator")
    if isinstance(simulator, dict) and isinstance(simulator.get("free_per_day"), int):
        return FreeQuota(int(simulator["free_per_day"]), "the simulator's GET /key")
    if data.get("is_free_tier") is False:
        return FreeQuota(CREDITED_DAILY_REQUESTS, "GET /key: an account that bought credits")
    return FreeQuota(FREE_TIER_DAILY_REQUESTS, "GET /key: a free account")
