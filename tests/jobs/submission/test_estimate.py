"""Estimates: a file read as submit reads it and stored nowhere, its tokens priced by lane, kept with a batch."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.core.models import Batch, Request
from jobs.formats.reader import FileSource
from jobs.formats.tokens import TokenCounter
from jobs.submission.catalog import ModelPrices
from jobs.submission.estimate import (
    CostRange,
    Estimate,
    FreeQuota,
    batch_variant,
    price,
)
from jobs.submission.submit import (
    Measured,
    ModelTokens,
    SubmitError,
    SubmitOptions,
    measure_source,
    submit_source,
)
from tests.support import chat_line, write_jsonl

CATALOG = {
    "openai/gpt-4o-mini": ModelPrices(Decimal("0.00000015"), Decimal("0.0000006"), None),
    "openai/gpt-4o-mini:batch": ModelPrices(Decimal("0.000000075"), Decimal("0.0000003"), None),
    "sim/echo": ModelPrices(Decimal("0.000001"), Decimal("0.000002"), Decimal("0.001")),
    "sim/echo:free": ModelPrices(Decimal(0), Decimal(0), None),
}


async def stored(engine: AsyncEngine) -> tuple[int, int]:
    async with engine.connect() as conn:
        batches = (await conn.execute(select(func.count()).select_from(Batch))).scalar_one()
        requests = (await conn.execute(select(func.count()).select_from(Request))).scalar_one()
    return int(batches), int(requests)


def prompt_tokens(model: str, *texts: str) -> int:
    counter = TokenCounter()
    for text in texts:
        counter.add(model, chat_line("x", text))
    return sum(counter.counts())


async def test_a_dry_run_counts_each_models_requests_and_stores_nothing(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    path = write_jsonl(
        tmp_path / "in.jsonl",
        [
            chat_line("a", "one", max_tokens=20),
            chat_line("b", "two two"),
            chat_line("c", "three", model="openai/gpt-4o-mini", max_completion_tokens=100),
        ],
    )
    measured = await measure_source(engine, FileSource.open(path), SubmitOptions(models=["sim/echo"]))
    assert measured.total == 3
    assert measured.tokens == [
        ModelTokens("sim/echo", 2, prompt_tokens("sim/echo", "one", "two two"), 20, 1),
        ModelTokens("openai/gpt-4o-mini", 1, prompt_tokens("openai/gpt-4o-mini", "three"), 100, 0),
    ]
    assert await stored(engine) == (0, 0)


async def test_a_dry_run_refuses_a_bad_file_in_submits_words(engine: AsyncEngine, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "x"), b"{broken", chat_line("a", "y")])
    options = SubmitOptions(models=["sim/echo"])
    with pytest.raises(SubmitError) as dry:
        await measure_source(engine, FileSource.open(path), options)
    with pytest.raises(SubmitError) as real:
        await submit_source(engine, FileSource.open(path), options)
    assert [str(e) for e in dry.value.errors] == [str(e) for e in real.value.errors]
    # The same words but for what was not done: a dry run queues nothing in any case.
    assert dry.value.reason == real.value.reason.replace("queued", "estimated").replace(
        "to queue", "to estimate"
    )
    assert "nothing was estimated" in dry.value.reason
    assert await stored(engine) == (0, 0)


async def test_with_skip_invalid_a_duplicate_id_counts_once_as_the_batch_keeps_it_once(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    path = write_jsonl(
        tmp_path / "in.jsonl", [chat_line("a", "short"), chat_line("a", "a much longer duplicate " * 20)]
    )
    options = SubmitOptions(models=["sim/echo"], skip_invalid=True)
    measured = await measure_source(engine, FileSource.open(path), options)
    assert (measured.total, measured.invalid) == (1, 1)
    assert measured.tokens[0].prompt_tokens == prompt_tokens("sim/echo", "short")
    report = await submit_source(engine, FileSource.open(path), options)
    assert report.tokens == measured.tokens


async def test_a_submit_keeps_the_estimate_a_dry_run_gives(engine: AsyncEngine, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line(str(i), f"review {i}") for i in range(10)])
    options = SubmitOptions(models=["openai/gpt-4o-mini"], defaults={"max_tokens": 30})

    def priced(measured: Measured) -> Estimate:
        return price(measured.tokens, CATALOG, completion_default=1024, quota=None)

    measured = await measure_source(engine, FileSource.open(path), options)
    report = await submit_source(
        engine, FileSource.open(path), options, estimate=lambda measured: priced(measured).to_json()
    )
    async with engine.connect() as conn:
        kept = (await conn.execute(select(Batch.estimate).where(Batch.id == report.batch_id))).scalar_one()
    assert kept is not None
    assert Estimate.from_json(kept) == priced(measured)
    assert kept["completion_tokens"] == 300


def test_the_live_lane_is_the_models_price_and_the_batch_lane_its_batch_variants() -> None:
    tokens = [
        ModelTokens("openai/gpt-4o-mini", requests=10, prompt_tokens=1000, completion_tokens=0, unbounded=10)
    ]
    estimate = price(tokens, CATALOG, completion_default=100, quota=None)
    [model] = estimate.models
    assert model.completion_tokens == 1000
    assert model.completion_assumed == 10
    # Low: the prompt alone; high: the prompt and every completion bound spent.
    assert estimate.live == CostRange(Decimal("0.00015"), Decimal("0.00015") + Decimal("0.0006"))
    assert estimate.batch == CostRange(Decimal("0.000075"), Decimal("0.000075") + Decimal("0.0003"))
    assert model.batch is not None
    assert model.batch.price_id == "openai/gpt-4o-mini:batch"
    assert Estimate.from_json(estimate.to_json()) == estimate


def test_a_request_price_counts_and_a_model_without_a_batch_variant_has_no_batch_lane() -> None:
    tokens = [ModelTokens("sim/echo", requests=4, prompt_tokens=100, completion_tokens=50, unbounded=0)]
    estimate = price(tokens, CATALOG, completion_default=1024, quota=None)
    assert estimate.live == CostRange(Decimal("0.0041"), Decimal("0.0042"))
    assert estimate.batch is None
    assert estimate.models[0].batch is None


def test_free_requests_cost_nothing_and_need_days_of_the_daily_quota() -> None:
    tokens = [
        ModelTokens("sim/echo:free", requests=120, prompt_tokens=5000, completion_tokens=0, unbounded=120),
        ModelTokens("openai/gpt-4o-mini", requests=1, prompt_tokens=10, completion_tokens=10, unbounded=0),
    ]
    estimate = price(tokens, CATALOG, completion_default=10, quota=FreeQuota(50, "GET /key: a free account"))
    assert estimate.models[0].live is not None
    assert estimate.models[0].live.cost == CostRange(Decimal(0), Decimal(0))
    assert (estimate.free_tier.requests, estimate.free_tier.days) == (120, 3)
    assert estimate.free_tier.describe() == (
        "120 free requests need 3 days of quota at 50 a day (GET /key: a free account)"
    )
    # The Batch API has no free models: the batch lane is not available for this file.
    assert batch_variant("sim/echo:free") is None
    assert estimate.batch is None


def test_without_the_catalogue_nothing_is_priced_but_free_models() -> None:
    tokens = [
        ModelTokens("sim/echo:free", requests=1, prompt_tokens=5, completion_tokens=0, unbounded=1),
        ModelTokens("openai/gpt-4o-mini", requests=1, prompt_tokens=5, completion_tokens=0, unbounded=1),
    ]
    estimate = price(tokens, None, completion_default=10, quota=None)
    assert not estimate.priced
    assert estimate.models[0].live is not None
    assert estimate.models[1].live is None
    assert estimate.live is None
    assert estimate.prompt_tokens == 10
