"""`orbatch models`: the catalogue as rows with prices per million tokens, filterable to free ones, as a table or JSON."""

from __future__ import annotations

import io
from decimal import Decimal

from rich.console import Console

from jobs.cli.model_rows import ModelRow, model_rows, render_table, rows_json
from tests.support import TEST_API_KEY, Simulator


async def test_the_catalogue_comes_back_as_rows_with_prices_per_million_tokens(simulator: Simulator) -> None:
    await simulator.configure(
        models=[
            {"id": "a/paid", "prompt": "0.0000015", "completion": "0.000002"},
            {"id": "a/small:free", "prompt": "0", "completion": "0"},
            {"id": "openrouter/auto", "prompt": "-1", "completion": "-1"},
        ],
        embedding_models=[{"id": "a/embed", "prompt": "0.00000002", "dimensions": 4}],
    )
    rows = await model_rows(simulator.base_url, TEST_API_KEY)
    assert rows == [
        ModelRow("a/paid", "a/paid", 131072, Decimal("1.5"), Decimal("2"), free=False),
        ModelRow("a/small:free", "a/small:free", 131072, Decimal(0), Decimal(0), free=True),
        # A price OpenRouter cannot know in advance (its routers) is unknown, not zero.
        ModelRow("openrouter/auto", "openrouter/auto", 131072, None, None, free=False),
        # The embedding models OpenRouter lists apart come after the chat models, marked as such.
        ModelRow("a/embed", "a/embed", 8192, Decimal("0.02"), Decimal(0), free=False, embeddings=True),
    ]
    assert await model_rows(simulator.base_url, None, free_only=True) == [rows[1]]


async def test_the_simulators_catalogue_is_openrouters_with_its_free_variants(simulator: Simulator) -> None:
    rows = {r.id: r for r in await model_rows(simulator.base_url, TEST_API_KEY)}
    mini = rows["openai/gpt-4o-mini"]
    assert (mini.name, mini.context_length) == ("OpenAI: GPT-4o-mini", 128000)
    assert (mini.prompt_per_million, mini.completion_per_million) == (Decimal("0.15"), Decimal("0.6"))
    free = await model_rows(simulator.base_url, TEST_API_KEY, free_only=True)
    assert len(free) > 15
    assert all(r.free and r.id.endswith(":free") and r.prompt_per_million == 0 for r in free)


def test_the_table_and_the_json_show_the_same_rows() -> None:
    rows = [
        ModelRow("a/paid", "A: Paid", 1_000_000, Decimal("0.08333333333333334"), Decimal("15"), free=False),
        ModelRow("a/small:free", "A: Small (free)", None, Decimal(0), Decimal(0), free=True),
        ModelRow("a/embed", "A: Embed", 8192, Decimal("0.02"), Decimal(0), free=False, embeddings=True),
    ]
    console = Console(file=io.StringIO(), width=200, record=True, color_system=None)
    console.print(render_table(rows))
    shown = console.export_text()
    assert "3 models" in shown
    paid, free, embed = (line for line in shown.splitlines() if "a/" in line)
    assert [cell.strip() for cell in paid.split("│")[1:-1]] == [
        "a/paid",
        "A: Paid",
        "1,000,000",
        "0.0833",
        "15",
        "",
        "chat",
    ]
    assert [cell.strip() for cell in free.split("│")[1:-1]] == [
        "a/small:free",
        "A: Small (free)",
        "?",
        "0",
        "0",
        "free",
        "chat",
    ]
    assert [cell.strip() for cell in embed.split("│")[1:-1]][-2:] == ["", "embeddings"]
    assert rows_json(rows) == [
        {
            "id": "a/paid",
            "name": "A: Paid",
            "context_length": 1_000_000,
            "prompt_per_million": "0.08333333333333334",
            "completion_per_million": "15",
            "free": False,
            "embeddings": False,
        },
        {
            "id": "a/small:free",
            "name": "A: Small (free)",
            "context_length": None,
            "prompt_per_million": "0",
            "completion_per_million": "0",
            "free": True,
            "embeddings": False,
        },
        {
            "id": "a/embed",
            "name": "A: Embed",
            "context_length": 8192,
            "prompt_per_million": "0.02",
            "completion_per_million": "0",
            "free": False,
            "embeddings": True,
        },
    ]
