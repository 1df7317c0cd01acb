"""OpenRouter's model lists: fetched from GET /models and GET /embeddings/models, prices kept as exact decimals,
cached in Postgres."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.submission.catalog import load_catalog
from tests.support import Simulator


async def test_the_model_list_is_fetched_with_exact_prices_and_cached(
    engine: AsyncEngine, simulator: Simulator
) -> None:
    await simulator.configure(
        models=[
            {"id": "a/paid", "prompt": "0.0000015", "completion": "0.000002"},
            {"id": "a/free:free", "prompt": "0", "completion": "0"},
            {"id": "openrouter/auto", "prompt": "-1", "completion": "-1"},
        ],
        embedding_models=[{"id": "a/embed", "prompt": "0.00000002", "dimensions": 4}],
    )
    catalog = await load_catalog(engine, simulator.base_url, None)
    # The embedding models, listed apart by OpenRouter, are models a batch may name too.
    assert set(catalog) == {"a/paid", "a/free:free", "openrouter/auto", "a/embed"}
    assert catalog["a/embed"].prompt == Decimal("0.00000002")
    assert catalog["a/paid"].prompt == Decimal("0.0000015")
    assert catalog["a/paid"].completion == Decimal("0.000002")
    assert catalog["openrouter/auto"].prompt is None
    # Within the hour it comes from Postgres: an upstream that fails does not matter.
    await simulator.configure(outage_status=503)
    cached = await load_catalog(engine, simulator.base_url, None)
    assert cached == catalog
    await simulator.configure(outage_status=None)


async def test_each_upstream_has_its_own_model_list(engine: AsyncEngine, simulator: Simulator) -> None:
    await simulator.configure(
        models=[{"id": "first/only", "prompt": "0", "completion": "0"}], embedding_models=[]
    )
    first = await load_catalog(engine, simulator.base_url, None)
    # Another upstream (here the same server by another name, now listing other models) is asked for its own
    # list, not answered from the first one's.
    await simulator.configure(models=[{"id": "second/only", "prompt": "0", "completion": "0"}])
    other = simulator.base_url.replace("127.0.0.1", "localhost")
    assert set(await load_catalog(engine, other, None)) == {"second/only"}
    assert await load_catalog(engine, simulator.base_url, None) == first
