"""OpenRouter's model list: fetched from GET /models, cached in Postgres with its prices."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
import orjson
from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.core.constants import SIMULATOR_HEADER
from jobs.core.models import ModelPrice

__all__ = [
    "Catalog",
    "ModelPrices",
    "fetch_models",
    "load_catalog",
    "price_of",
    "refresh_catalog",
    "upstream_is_simulator",
    "upstream_simulator",
]

# Prices change rarely; ids appear often. An hour keeps submit fast and new models usable the same day.
CATALOG_MAX_AGE_SECONDS = 3600


@dataclass(slots=True, frozen=True)
class ModelPrices:
    """USD per token (and per request), as OpenRouter lists them."""

    prompt: Decimal | None
    completion: Decimal | None
    request: Decimal | None
    # A model of OpenRouter's embeddings list: it answers /embeddings requests, not chat.
    embeddings: bool = False
    # The most tokens (prompt and completion together) the model takes; None when the list does not say.
    context_length: int | None = None


def _context_of(value: Any) -> int | None:
    """A listed `context_length`, when it is a positive whole number."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


Catalog = dict[str, ModelPrices]


def price_of(value: Any) -> Decimal | None:
    # Prices are strings in USD per token; "-1" marks a price OpenRouter does not know (variable routers).
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return amount if amount >= 0 else None


async def fetch_models(base_url: str, api_key: str | None) -> Catalog:
    """GET /models and GET /embeddings/models: every model id with its prices."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(
        base_url=base_url.rstrip("/") + "/", timeout=20.0, headers=headers
    ) as client:
        response = await client.get("models")
        response.raise_for_status()
        catalog = _listed(response.content)
        # OpenRouter lists its embedding models apart from the chat models; an upstream without the list
        # (404) has none.
        embeddings = await client.get("embeddings/models")
        if embeddings.status_code != 404:
            embeddings.raise_for_status()
            catalog.update(_listed(embeddings.content, embeddings=True))
    return catalog


def _listed(content: bytes, *, embeddings: bool = False) -> Catalog:
    """The ids and prices of a model list's answer."""
    catalog: Catalog = {}
    for model in orjson.loads(content).get("data", []):
        if not isinstance(model, dict) or not isinstance(model.get("id"), str):
            continue
        pricing = model.get("pricing")
        if not isinstance(pricing, dict):
            pricing = {}
        catalog[model["id"]] = ModelPrices(
            price_of(pricing.get("prompt")),
            price_of(pricing.get("completion")),
            price_of(pricing.get("request")),
            embeddings,
            _context_of(model.get("context_length")),
        )
    return catalog


async def upstream_simulator(base_url: str, api_key: str | None) -> bool | None:
    """Whether the upstream is orbatch's simulator (its answers say so in a header, with a key or without);
    None when it cannot be reached, so the caller can ask again later."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/", timeout=5.0, headers=headers
        ) as client:
            response = await client.get("key")
    except httpx.HTTPError:
        return None
    return SIMULATOR_HEADER in response.headers


async def upstream_is_simulator(base_url: str, api_key: str | None) -> bool:
    """True when the upstream is orbatch's simulator; an unreachable one is taken for OpenRouter."""
    return bool(await upstream_simulator(base_url, api_key))


def _upstream(base_url: str) -> str:
    """The key an upstream's list is kept under: its base URL, without a trailing slash."""
    return base_url.rstrip("/")


async def refresh_catalog(engine: AsyncEngine, catalog: Catalog, base_url: str) -> None:
    """Replace the cached model list of the upstream at `base_url` (the others' are kept)."""
    upstream = _upstream(base_url)
    async with engine.begin() as conn:
        await conn.execute(delete(ModelPrice).where(ModelPrice.upstream == upstream))
        if catalog:
            await conn.execute(
                insert(ModelPrice),
                [
                    {
                        "upstream": upstream,
                        "id": m,
                        "prompt": p.prompt,
                        "completion": p.completion,
                        "request": p.request,
                        "embeddings": p.embeddings,
                        "context_length": p.context_length,
                    }
                    for m, p in catalog.items()
                ],
            )


async def load_catalog(
    engine: AsyncEngine, base_url: str, api_key: str | None, max_age: float = CATALOG_MAX_AGE_SECONDS
) -> Catalog:
    """The upstream's model list from Postgres, fetched again from it when older than `max_age` seconds.

    Each upstream (OpenRouter, a simulator, another proxy) has its own: one database may serve submits and
    workers against several."""
    upstream = _upstream(base_url)
    async with engine.connect() as conn:
        age = (
            await conn.execute(
                select(func.extract("epoch", func.now() - func.max(ModelPrice.fetched_at))).where(
                    ModelPrice.upstream == upstream
                )
            )
        ).scalar_one()
        if age is not None and float(age) < max_age:
            rows = (await conn.execute(select(ModelPrice).where(ModelPrice.upstream == upstream))).all()
            return {
                r.id: ModelPrices(r.prompt, r.completion, r.request, r.embeddings, r.context_length)
                for r in rows
            }
    catalog = await fetch_models(base_url, api_key)
    await refresh_catalog(engine, catalog, base_url)
    return catalog
