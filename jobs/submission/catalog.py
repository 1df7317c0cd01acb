"""OpenRouter's model list: fetched from GET /models, cached in Postgres with its prices."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
import orjson
from rich.table import Table
from rich.text import Text
from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.core.constants import SIMULATOR_HEADER
from jobs.core.models import ModelPrice

__all__ = [
    "Catalog",
    "ModelPrices",
    "ModelRow",
    "fetch_models",
    "listing_rows",
    "load_catalog",
    "model_rows",
    "refresh_catalog",
    "render_table",
    "rows_json",
    "shipped_rows",
    "simulator_rows",
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
            return {r.id: ModelPrices(r.prompt, r.completion, r.request) for r in rows}
    catalog = await fetch_models(base_url, api_key)
    await refresh_catalog(engine, catalog, base_url)
    return catalog


# --- `orbatch models` ----------------------------------------------------------------------------------

PER_MILLION = Decimal(1_000_000)


@dataclass(slots=True, frozen=True)
class ModelRow:
    """One model of the catalogue as `orbatch models` shows it; prices in USD per million tokens."""

    id: str
    name: str
    context_length: int | None
    prompt_per_million: Decimal | None
    completion_per_million: Decimal | None
    free: bool


def _row(model: dict[str, Any]) -> ModelRow:
    pricing = model.get("pricing")
    if not isinstance(pricing, dict):
        pricing = {}
    prompt, completion = _price(pricing.get("prompt")), _price(pricing.get("completion"))
    context = model.get("context_length")
    return ModelRow(
        id=model["id"],
        name=str(model.get("name") or model["id"]),
        context_length=context if isinstance(context, int) and not isinstance(context, bool) else None,
        prompt_per_million=None if prompt is None else prompt * PER_MILLION,
        completion_per_million=None if completion is None else completion * PER_MILLION,
        # The `:free` variants are the ones OpenRouter's free-tier limits apply to.
        free=model["id"].endswith(":free"),
    )


def listing_rows(listing: Any, free_only: bool = False) -> list[ModelRow]:
    """The rows of a `GET /models` answer's `data`, in its order; `free_only` keeps the `:free` variants."""
    entries = listing if isinstance(listing, list) else []
    rows = [_row(m) for m in entries if isinstance(m, dict) and isinstance(m.get("id"), str)]
    return [r for r in rows if r.free] if free_only else rows


async def model_rows(base_url: str, api_key: str | None, free_only: bool = False) -> list[ModelRow]:
    """The catalogue from `GET {base_url}/models` (OpenRouter or the simulator), in its order.

    `free_only` keeps the `:free` variants."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(
        base_url=base_url.rstrip("/") + "/", timeout=20.0, headers=headers
    ) as client:
        response = await client.get("models")
        response.raise_for_status()
    body = orjson.loads(response.content)
    return listing_rows(body.get("data", []) if isinstance(body, dict) else [], free_only)


def shipped_rows(free_only: bool = False) -> tuple[list[ModelRow], str]:
    """OpenRouter's list as saved and shipped with orbatch (the file the simulator serves), read with no network;
    and what it is, for a user."""
    from jobs.simulator.server import CATALOG_FILE, openrouter_snapshot

    saved, listing = openrouter_snapshot()
    return listing_rows(listing, free_only), (
        f"OpenRouter's list as saved on {saved}, the copy shipped with orbatch (jobs/simulator/{CATALOG_FILE})"
    )


def simulator_rows(free_only: bool = False) -> tuple[list[ModelRow], str]:
    """The catalogue orbatch's simulator serves (`GET /models`), read with no network; and what it is."""
    from jobs.simulator.server import openrouter_snapshot, served_models

    saved, _ = openrouter_snapshot()
    return listing_rows(served_models(), free_only), (
        f"the simulator's catalogue: OpenRouter's list as saved on {saved} (shipped with orbatch), the models "
        "the examples name that OpenRouter has withdrawn since, and the tests' sim/* models"
    )


def _usd(amount: Decimal | None) -> str:
    if amount is None:
        return "?"
    # Four decimals are a hundredth of a cent per million tokens: enough for any listed price.
    return f"{amount.quantize(Decimal('0.0001')).normalize():f}"


def render_table(rows: list[ModelRow], source: str | None = None) -> Table:
    """The rows as a Rich table: id, name, context, USD per million prompt and completion tokens, free; its title
    counts them and says where they come from."""
    title = f"{len(rows)} models" + (f" from {source}" if source else "")
    table = Table(title=Text(title), title_justify="left")
    table.add_column("model", overflow="fold")
    table.add_column("name", overflow="fold")
    table.add_column("context", justify="right")
    table.add_column("$/M in", justify="right")
    table.add_column("$/M out", justify="right")
    table.add_column("free")
    for row in rows:
        table.add_row(
            Text(row.id),
            Text(row.name),
            "?" if row.context_length is None else f"{row.context_length:,}",
            _usd(row.prompt_per_million),
            _usd(row.completion_per_million),
            "free" if row.free else "",
        )
    return table


def rows_json(rows: list[ModelRow]) -> list[dict[str, Any]]:
    """The rows for `--json`: prices as decimal strings (USD per million tokens) or null when unknown."""
    return [
        {
            "id": r.id,
            "name": r.name,
            "context_length": r.context_length,
            "prompt_per_million": None
            if r.prompt_per_million is None
            else f"{r.prompt_per_million.normalize():f}",
            "completion_per_million": None
            if r.completion_per_million is None
            else f"{r.completion_per_million.normalize():f}",
            "free": r.free,
        }
        for r in rows
    ]
