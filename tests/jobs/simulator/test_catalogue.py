"""The simulator's catalogue: OpenRouter's real list and prices, the tests' models, the cost of a call."""

from __future__ import annotations

from decimal import Decimal

from tests.jobs.simulator.client import chat, get, post_chat, spec_validator
from tests.support import Simulator


async def test_models_lists_openrouters_catalogue_its_free_variants_and_the_test_models(
    simulator: Simulator,
) -> None:
    response = await get(simulator, "models")
    listing = response.json()
    errors = [
        e.message for e in spec_validator("/components/schemas/ModelsListResponse").iter_errors(listing)
    ]
    assert not errors, errors[:5]
    models = {m["id"]: m for m in listing["data"]}
    assert listing["total_count"] == len(models) > 400
    assert models["openai/gpt-4o-mini"]["pricing"]["prompt"] == "0.00000015"
    assert len([m for m in models if m.endswith(":free")]) > 15
    # Withdrawn models the examples name, and the tests' own.
    assert {"meta-llama/llama-3.3-70b-instruct:free", "anthropic/claude-3.5-sonnet"} <= models.keys()
    assert {"sim/echo", "sim/echo:free", "sim/backup", "sim/spare", "sim/last-resort"} <= models.keys()
    # OpenRouter's batch variants, and the tests' own at half price.
    assert len([m for m in models if m.endswith(":batch")]) > 40
    for model in ("sim/echo", "sim/backup"):
        batch, live = models[f"{model}:batch"]["pricing"], models[model]["pricing"]
        for kind in ("prompt", "completion"):
            assert Decimal(batch[kind]) * 2 == Decimal(live[kind])
    # Embeddings models are listed apart (GET /embeddings/models), as on OpenRouter.
    assert not [m for m in models.values() if "embeddings" in m["architecture"]["output_modalities"]]
    assert "sim/embed" not in models


async def test_a_listed_model_is_answered_and_billed_at_its_listed_prices(simulator: Simulator) -> None:
    pricing = {m["id"]: m["pricing"] for m in (await get(simulator, "models")).json()["data"]}
    text = "How many moons has Mars? " * 8
    answer = (await post_chat(simulator, chat(text, "anthropic/claude-3.5-sonnet"))).json()
    assert answer["model"] == "anthropic/claude-3.5-sonnet"
    usage = answer["usage"]
    expected = (
        Decimal(pricing["anthropic/claude-3.5-sonnet"]["prompt"]) * usage["prompt_tokens"]
        + Decimal(pricing["anthropic/claude-3.5-sonnet"]["completion"]) * usage["completion_tokens"]
    )
    assert Decimal(str(usage["cost"])) == expected > 0
    unknown = await post_chat(simulator, chat("hi", "anthropic/claude-2-not-listed"))
    assert unknown.status_code == 400
    assert "not a valid model ID" in unknown.json()["error"]["message"]


async def test_a_per_request_price_is_added_to_the_token_prices(simulator: Simulator) -> None:
    await simulator.configure(
        models=[{"id": "a/priced", "prompt": "0.000001", "completion": "0.000002", "request": "0.005"}]
    )
    usage = (await post_chat(simulator, chat("x" * 400, "a/priced"))).json()["usage"]
    tokens = Decimal("0.000001") * usage["prompt_tokens"] + Decimal("0.000002") * usage["completion_tokens"]
    assert Decimal(str(usage["cost"])) == tokens + Decimal("0.005")


async def test_a_prompt_over_a_models_context_is_answered_400_as_openrouter_answers_it(
    simulator: Simulator,
) -> None:
    # sim/small takes 512 tokens; the simulator counts four characters a token: 3,000 characters are 750.
    long = "word " * 600
    refused = await post_chat(simulator, chat(long, "sim/small"))
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == (
        "This endpoint's maximum context length is 512 tokens. However, you requested about 750 tokens (750 of "
        'text input, 0 in the output). Please reduce the length of either one, or use the "middle-out" transform '
        "to compress your prompt automatically."
    )
    # The prompt fits, its max_tokens does not: refused too, the output counted.
    over = await post_chat(simulator, chat("x" * 400, "sim/small", max_tokens=500))
    assert over.status_code == 400
    assert "about 600 tokens (100 of text input, 500 in the output)" in over.json()["error"]["message"]
    assert (await post_chat(simulator, chat("x" * 400, "sim/small"))).status_code == 200
    # In a `models` chain the next model that can take it answers, as OpenRouter falls back.
    fallback = await post_chat(simulator, {**chat(long, "sim/small"), "models": ["sim/small", "sim/echo"]})
    assert fallback.status_code == 200
    assert fallback.json()["model"] == "sim/echo"
    # A configured model's context is its own; the listing says it.
    await simulator.configure(
        models=[{"id": "a/tiny", "prompt": "0", "completion": "0", "context_length": 64}]
    )
    assert (await get(simulator, "models")).json()["data"][0]["context_length"] == 64
    assert (await post_chat(simulator, chat("y" * 400, "a/tiny"))).status_code == 400
