"""`orbatch models`'s rows: a catalogue's models with prices per million tokens, as a table or JSON."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import orjson
from rich.table import Table
from rich.text import Text

from jobs.submission.catalog import price_of

__all__ = [
    "ModelRow",
    "listing_rows",
    "model_rows",
    "render_table",
    "rows_json",
    "shipped_rows",
    "simulator_rows",
]


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
    # An embedding model (OpenRouter's GET /embeddings/models): it answers /v1/embeddings lines, not chat.
    embeddings: bool = False


def _row(model: dict[str, Any], embeddings: bool = False) -> ModelRow:
    pricing = model.get("pricing")
    if not isinstance(pricing, dict):
        pricing = {}
    prompt, completion = price_of(pricing.get("prompt")), price_of(pricing.get("completion"))
    context = model.get("context_length")
    return ModelRow(
        id=model["id"],
        name=str(model.get("name") or model["id"]),
        context_length=context if isinstance(context, int) and not isinstance(context, bool) else None,
        prompt_per_million=None if prompt is None else prompt * PER_MILLION,
        completion_per_million=None if completion is None else completion * PER_MILLION,
        # The `:free` variants are the ones OpenRouter's free-tier limits apply to.
        free=model["id"].endswith(":free"),
        embeddings=embeddings,
    )


def listing_rows(listing: Any, free_only: bool = False, embeddings: bool = False) -> list[ModelRow]:
    """The rows of a `GET /models` (or, `embeddings`, `GET /embeddings/models`) answer's `data`, in its order;
    `free_only` keeps the `:free` variants."""
    entries = listing if isinstance(listing, list) else []
    rows = [_row(m, embeddings) for m in entries if isinstance(m, dict) and isinstance(m.get("id"), str)]
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
        # The embedding models, listed apart; an upstream without the list (404) has none.
        vectors = await client.get("embeddings/models")
        if vectors.status_code != 404:
            vectors.raise_for_status()
    body = orjson.loads(response.content)
    rows = listing_rows(body.get("data", []) if isinstance(body, dict) else [], free_only)
    if vectors.status_code == 404:
        return rows
    listed = orjson.loads(vectors.content)
    return rows + listing_rows(listed.get("data", []) if isinstance(listed, dict) else [], free_only, True)


def shipped_rows(free_only: bool = False) -> tuple[list[ModelRow], str]:
    """OpenRouter's list as saved and shipped with orbatch (the file the simulator serves), read with no network;
    and what it is, for a user."""
    from jobs.simulator.catalogue import CATALOG_FILE, openrouter_snapshot

    saved, listing = openrouter_snapshot()
    return listing_rows(listing, free_only), (
        f"OpenRouter's list as saved on {saved}, the copy shipped with orbatch (jobs/simulator/{CATALOG_FILE})"
    )


def simulator_rows(free_only: bool = False) -> tuple[list[ModelRow], str]:
    """The catalogue orbatch's simulator serves (`GET /models`), read with no network; and what it is."""
    from jobs.simulator.catalogue import EMBEDDING_MODELS, embedding_entry, openrouter_snapshot, served_models

    saved, _ = openrouter_snapshot()
    vectors = [embedding_entry(m) for m in EMBEDDING_MODELS]
    return listing_rows(served_models(), free_only) + listing_rows(vectors, free_only, embeddings=True), (
        f"the simulator's catalogue: OpenRouter's list as saved on {saved} (shipped with orbatch), the models "
        "the examples name that OpenRouter has withdrawn since, the tests' sim/* models, and embedding models"
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
    table.add_column("kind")
    for row in rows:
        table.add_row(
            Text(row.id),
            Text(row.name),
            "?" if row.context_length is None else f"{row.context_length:,}",
            _usd(row.prompt_per_million),
            _usd(row.completion_per_million),
            "free" if row.free else "",
            "embeddings" if row.embeddings else "chat",
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
            "embeddings": r.embeddings,
        }
        for r in rows
    ]
