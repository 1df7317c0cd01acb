"""OpenRouter's model list: fetched from GET /models, cached in Postgres with its prices."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
import orjson
from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.models import ModelPrice

__all__ = ["Catalog", "ModelPrices", "fetch_models", "load_catalog", "refresh_catalog"]

# Prices change rarely; ids appear often. An hour keeps submit fast and new models usable the same day.
CATALOG_MAX_AGE_SECONDS = 3600


@dataclass(slots=True, frozen=True)
class ModelPrices:
    """USD per token (and per request), as OpenRouter lists them."""

    prompt: Decimal | None
    completion: Decimal | None
    request: Decimal | None


Catalog = dict[str, ModelPrices]


def _price(value: Any) -> Decimal | None:
    # Prices are strings in USD per token; "-1" marks a price OpenRouter does not know (variable routers).
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return amount if amount >= 0 else None


async def fetch_models(base_url: str, api_key: str | None) -> Catalog:
    """GET /models: every model id with its prices."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(
        base_url=base_url.rstrip("/") + "/", timeout=20.0, headers=headers
    ) as client:
        response = await client.get("models")
        response.raise_for_status()
    catalog: Catalog = {}
    for model in orjson.loads(response.content).get("data", []):
        if not isinstance(model, dict) or not isinstance(model.get("id"), str):
            continue
        pricing = model.get("pricing")
        if not isinstance(pricing, dict):
            pricing = {}
        catalog[model["id"]] = ModelPrices(
            _price(pricing.get("prompt")), _price(pricing.get("completion")), _price(pricing.get("request"))
        )
    return catalog


async def refresh_catalog(engine: AsyncEngine, catalog: Catalog) -> None:
    """Replace the cached model list."""
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM model_price"))
        if catalog:
            await conn.execute(
                insert(ModelPrice),
                [
                    {"id": m, "prompt": p.prompt, "completion": p.completion, "request": p.request}
                    for m, p in catalog.items()
                ],
            )


async def load_catalog(
    engine: AsyncEngine, base_url: str, api_key: str | None, max_age: float = CATALOG_MAX_AGE_SECONDS
) -> Catalog:
    """The model list from Postgres, fetched again from OpenRouter when older than `max_age` seconds."""
    async with engine.connect() as conn:
        age = (
            await conn.execute(select(func.extract("epoch", func.now() - func.max(ModelPrice.fetched_at))))
        ).scalar_one()
        if age is not None and float(age) < max_age:
            rows = (await conn.execute(select(ModelPrice))).all()
            return {r.id: ModelPrices(r.prompt, r.completion, r.request) for r in rows}
    catalog = await fetch_models(base_url, api_key)
    await refresh_catalog(engine, catalog)
    return catalog
