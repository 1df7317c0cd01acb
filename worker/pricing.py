"""Costs a call from the served model's listed prices when OpenRouter's answer carries no cost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal

from jobs.core.logs import get_logger
from jobs.submission.catalog import Catalog, ModelPrices
from worker.classify import Usage

__all__ = ["PriceBook"]

log = get_logger(__name__)

# A model missing from the cached list triggers a fresh GET /models at most this often.
_REFRESH_EVERY_SECONDS = 60.0


class PriceBook:
    """Prices per model, loaded from the Postgres cache of GET /models and refreshed on a miss."""

    def __init__(self, load: Callable[[float], Awaitable[Catalog]]) -> None:
        # `load(max_age)`: the catalog, fetched again from OpenRouter when older than max_age seconds.
        self._load = load
        self._prices: Catalog = {}
        self._refreshed = float("-inf")
        self._loading = asyncio.Lock()

    async def _lookup(self, model: str) -> ModelPrices | None:
        if model in self._prices:
            return self._prices[model]
        # Calls that miss together wait for one load rather than each finding the list still empty.
        async with self._loading:
            if model not in self._prices and time.monotonic() - self._refreshed > _REFRESH_EVERY_SECONDS:
                self._refreshed = time.monotonic()
                try:
                    # First from the cache; a model it lacks is new, so the second look asks OpenRouter.
                    self._prices = await self._load(3600.0)
                    if model not in self._prices:
                        self._prices = await self._load(0.0)
                except Exception as exc:  # no price list means no estimate, never a failed request
                    log.warning("could not load model prices", error=str(exc))
        return self._prices.get(model)

    async def listed(self, model: str) -> bool:
        """Whether OpenRouter's model list has `model` (a miss looks again at most every minute)."""
        return await self._lookup(model) is not None

    async def fill(self, usage: Usage, model: str | None) -> None:
        """Set the usage's cost from list prices when OpenRouter reported none; free models cost 0."""
        if usage.cost is not None or model is None:
            return
        if model.endswith(":free"):
            usage.cost = Decimal(0)
            return
        prices = await self._lookup(model)
        if prices is None or prices.prompt is None or prices.completion is None:
            return
        usage.cost = (
            prices.prompt * (usage.prompt_tokens or 0)
            + prices.completion * (usage.completion_tokens or 0)
            + (prices.request or Decimal(0))
        )
        usage.cost_estimated = True
