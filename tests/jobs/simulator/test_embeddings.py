"""The simulator's Embeddings API, item by item of embeddings.md §9, checked against OpenRouter's spec."""

from __future__ import annotations

import base64
import math
import struct
from decimal import Decimal
from typing import Any

import pytest

from tests.jobs.simulator.client import api, get, spec_errors
from tests.support import Simulator

REQUEST = "/paths/~1embeddings/post/requestBody/content/application~1json/schema"
RESPONSE = "/paths/~1embeddings/post/responses/200/content/application~1json/schema"
MODELS = "/paths/~1embeddings~1models/get/responses/200/content/application~1json/schema"


def error_schema(status: int) -> str:
    return f"/paths/~1embeddings/post/responses/{status}/content/application~1json/schema"


async def embed(simulator: Simulator, body: Any, **options: Any) -> Any:
    """POST /embeddings; the response."""
    return await api(simulator, "POST", "embeddings", json=body, **options)


async def embedded(simulator: Simulator, body: dict[str, Any]) -> dict[str, Any]:
    """POST /embeddings with a body the spec accepts, answered 200 with a body the spec describes."""
    assert spec_errors(REQUEST, body) == []
    response = await embed(simulator, body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    assert spec_errors(RESPONSE, answer) == []
    return answer


async def test_a_call_without_a_bearer_key_is_a_401(simulator: Simulator) -> None:
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic x"}):
        refused = await embed(simulator, {"model": "sim/embed", "input": "x"}, headers=headers)
        assert refused.status_code == 401
        assert spec_errors(error_schema(401), refused.json()) == []


@pytest.mark.parametrize(
    "body",
    [
        {"input": "x"},
        {"model": "sim/embed"},
        {"model": "sim/embed", "input": None},
        {"model": "sim/embed", "input": ""},
        {"model": "sim/embed", "input": []},
        {"model": "sim/embed", "input": ["a", ""]},
        {"model": "sim/embed", "input": 42},
        {"model": "sim/embed", "input": {"text": "x"}},
        {"model": "sim/embed", "input": ["a", 1]},
        {"model": "sim/embed", "input": [[1, 2], []]},
        {"model": "sim/embed", "input": [1.5, 2]},
        {"model": "sim/embed", "input": [True]},
        {"model": 7, "input": "x"},
        {"model": "sim/embed", "input": "x", "dimensions": 0},
        {"model": "sim/embed", "input": "x", "dimensions": True},
        {"model": "sim/embed", "input": "x", "encoding_format": "int8"},
        {"model": "sim/embed", "input": "x", "input_type": 3},
        {"model": "sim/embed", "input": [{"content": []}]},
        [{"model": "sim/embed", "input": "x"}],
    ],
    ids=[
        "no-model",
        "no-input",
        "null-input",
        "empty-string",
        "empty-array",
        "empty-string-in-array",
        "number",
        "object",
        "mixed",
        "empty-token-array",
        "float-tokens",
        "bool-tokens",
        "model-type",
        "dimensions-0",
        "dimensions-bool",
        "encoding",
        "input_type",
        "empty-content",
        "not-an-object",
    ],
)
async def test_a_malformed_request_is_a_400(simulator: Simulator, body: Any) -> None:
    refused = await embed(simulator, body)
    assert refused.status_code == 400, refused.text
    assert spec_errors(error_schema(400), refused.json()) == []
    assert refused.json()["error"]["code"] == 400


@pytest.mark.parametrize(
    ("value", "count"),
    [
        ("The quick brown fox jumps over the lazy dog", 1),
        (["first text", "second text", "third"], 3),
        ([101, 2023, 2003], 1),
        ([[101, 2023], [7], [1, 2, 3, 4]], 3),
    ],
    ids=["string", "strings", "tokens", "token-arrays"],
)
async def test_every_text_and_token_form_gives_one_vector_per_input_in_order(
    simulator: Simulator, value: Any, count: int
) -> None:
    answer = await embedded(simulator, {"model": "openai/text-embedding-3-small", "input": value})
    assert answer["object"] == "list"
    assert answer["model"] == "openai/text-embedding-3-small"
    assert [(d["object"], d["index"]) for d in answer["data"]] == [("embedding", i) for i in range(count)]
    assert {len(d["embedding"]) for d in answer["data"]} == {1536}
    usage = answer["usage"]
    assert usage["prompt_tokens"] == usage["total_tokens"] > 0
    if isinstance(value, list) and isinstance(value[0], int):
        assert usage["prompt_tokens"] == len(value)  # a token array counts its tokens


async def test_multimodal_input_is_taken_by_a_model_that_reads_images_and_refused_by_one_that_does_not(
    simulator: Simulator,
) -> None:
    item = {
        "content": [
            {"type": "text", "text": "a red bicycle"},
            {"type": "image_url", "image_url": {"url": "https://example.com/bike.png"}},
        ]
    }
    answer = await embedded(simulator, {"model": "nvidia/llama-nemotron-embed-vl-1b-v2", "input": [item]})
    assert len(answer["data"]) == 1
    details = answer["usage"]["prompt_tokens_details"]  # two modalities: a breakdown
    assert details["image_tokens"] == 258
    assert answer["usage"]["prompt_tokens"] == details["text_tokens"] + details["image_tokens"]
    refused = await embed(simulator, {"model": "sim/embed", "input": [item]})
    assert refused.status_code == 400
    assert "image" in refused.json()["error"]["message"]
    text_only = await embedded(
        simulator, {"model": "sim/embed", "input": [{"content": [item["content"][0]]}]}
    )
    assert "prompt_tokens_details" not in text_only["usage"]


@pytest.mark.parametrize("model", ["no/such-embedder", "sim/echo", "openai/gpt-4o-mini"])
async def test_an_unknown_or_non_embedding_model_is_a_404(simulator: Simulator, model: str) -> None:
    missing = await embed(simulator, {"model": model, "input": "x"})
    assert missing.status_code == 404
    assert spec_errors(error_schema(404), missing.json()) == []
    assert model in missing.json()["error"]["message"]


async def test_vectors_are_deterministic_unit_length_and_as_long_as_asked(simulator: Simulator) -> None:
    body = {"model": "sim/embed", "input": ["alpha", "beta", "alpha"]}
    first = await embedded(simulator, body)
    again = await embedded(simulator, body)
    vectors = [d["embedding"] for d in first["data"]]
    assert vectors == [d["embedding"] for d in again["data"]]
    assert vectors[0] == vectors[2] != vectors[1]
    assert all(len(v) == 8 for v in vectors)
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-9) for v in vectors)
    shorter = await embedded(simulator, {**body, "dimensions": 3})
    assert [len(d["embedding"]) for d in shorter["data"]] == [3, 3, 3]
    assert shorter["data"][0]["embedding"] != vectors[0][:3]  # the dimensions are part of the seed
    other_model = await embedded(simulator, {**body, "model": "openai/text-embedding-3-large"})
    assert len(other_model["data"][0]["embedding"]) == 3072
    assert other_model["data"][0]["embedding"][:8] != vectors[0]


async def test_base64_packs_the_same_vector_as_float32_little_endian(simulator: Simulator) -> None:
    floats = await embedded(simulator, {"model": "sim/embed", "input": "pack me"})
    packed = await embedded(
        simulator, {"model": "sim/embed", "input": "pack me", "encoding_format": "base64"}
    )
    raw = base64.b64decode(packed["data"][0]["embedding"])
    unpacked = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert unpacked == pytest.approx(floats["data"][0]["embedding"], rel=1e-6)


async def test_usage_costs_the_tokens_at_the_listed_price(simulator: Simulator) -> None:
    listing = (await get(simulator, "embeddings/models")).json()["data"]
    price = {m["id"]: Decimal(m["pricing"]["prompt"]) for m in listing}
    assert price["openai/text-embedding-3-small"] == Decimal("0.00000002")
    assert price["openai/text-embedding-3-large"] == Decimal("0.00000013")
    assert price["sim/embed:batch"] * 2 == price["sim/embed"] > 0
    text = "x" * 400
    usage = (await embedded(simulator, {"model": "sim/embed", "input": [text, text]}))["usage"]
    # The token stub: four characters a token.
    assert usage["prompt_tokens"] == usage["total_tokens"] == 200
    assert Decimal(str(usage["cost"])) == price["sim/embed"] * 200
    assert usage["is_byok"] is False


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (402, "Insufficient credits. Add more using https://openrouter.ai/credits"),
        (408, "Operation timed out. Please try again later."),
        (413, "Request payload too large"),
        (429, "Rate limit exceeded"),
        (502, "Provider returned error"),
        (503, "Service temporarily unavailable"),
        (524, "Request timed out. Please try again later."),
        (529, "Provider returned error"),
    ],
)
async def test_each_documented_failure_can_be_injected_with_the_spec_s_envelope(
    simulator: Simulator, status: int, message: str
) -> None:
    await simulator.configure(rules=[{"route": "embeddings", "status": status, "times": 1}])
    failed = await embed(simulator, {"model": "sim/embed", "input": "x"})
    assert failed.status_code == status
    assert failed.json()["error"] == {"code": status, "message": message}
    assert spec_errors(error_schema(status), failed.json()) == []
    assert (await embed(simulator, {"model": "sim/embed", "input": "x"})).status_code == 200
    # A rule on the input's text fails only the calls that carry it.
    await simulator.configure(rules=[{"match": "poison", "status": status}])
    assert (await embed(simulator, {"model": "sim/embed", "input": ["ok", "poison"]})).status_code == status
    assert (await embed(simulator, {"model": "sim/embed", "input": ["ok"]})).status_code == 200


async def test_no_credits_is_a_402_and_an_outage_fails_embeddings_too(simulator: Simulator) -> None:
    await simulator.configure(credits=0)
    assert (await embed(simulator, {"model": "sim/embed", "input": "x"})).status_code == 402
    await simulator.configure(credits=None, outage_status=503)
    assert (await embed(simulator, {"model": "sim/embed", "input": "x"})).status_code == 503
    assert (await get(simulator, "embeddings/models")).status_code == 503


async def test_embeddings_calls_are_logged_beside_chat_calls_with_their_path(simulator: Simulator) -> None:
    await embedded(simulator, {"model": "sim/embed", "input": "logged"})
    await embed(simulator, {"model": "sim/embed", "input": ""})
    calls = await simulator.calls()
    assert [(c["path"], c["status"], c["outcome"]) for c in calls] == [
        ("/embeddings", 200, "ok"),
        ("/embeddings", 400, "invalid"),
    ]
    assert calls[0]["body"]["input"] == "logged"
    assert calls[0]["model"] == "sim/embed"
    assert (await simulator.stats())["calls"] == 2


async def test_the_embeddings_models_are_listed_apart_from_models_with_offset_and_limit(
    simulator: Simulator,
) -> None:
    everything = (await get(simulator, "embeddings/models")).json()
    assert spec_errors(MODELS, everything) == []
    ids = [m["id"] for m in everything["data"]]
    assert everything["total_count"] == len(ids)
    assert everything["links"]["next"] is None
    assert {
        "openai/text-embedding-3-small",
        "openai/text-embedding-3-large",
        "qwen/qwen3-embedding-0.6b",
        "sim/embed",
        "sim/embed:batch",
    } <= set(ids)
    assert all(m["architecture"]["output_modalities"] == ["embeddings"] for m in everything["data"])
    page = (await api(simulator, "GET", "embeddings/models", params={"offset": 1, "limit": 2})).json()
    assert [m["id"] for m in page["data"]] == ids[1:3]
    assert page["links"]["next"] == "/api/v1/embeddings/models?offset=3&limit=2"
    assert [m["id"] for m in (await api(simulator, "GET", page["links"]["next"][8:])).json()["data"]] == ids[
        3:5
    ]
    assert (await api(simulator, "GET", "embeddings/models", params={"offset": 2})).json()[
        "data"
    ] == everything["data"][2:]
    for params in ({"limit": 0}, {"limit": 1001}, {"offset": -1}, {"limit": "many"}):
        assert (await api(simulator, "GET", "embeddings/models", params=params)).status_code == 400
    # As on OpenRouter, /models lists no embeddings model.
    chat_models = {m["id"] for m in (await get(simulator, "models")).json()["data"]}
    assert not chat_models & set(ids)


async def test_embedding_models_can_be_configured_like_the_chat_models(simulator: Simulator) -> None:
    await simulator.configure(
        embedding_models=[{"id": "a/tiny-embed", "prompt": "0.000003", "dimensions": 2}]
    )
    answer = await embedded(simulator, {"model": "a/tiny-embed", "input": "abcdefgh"})
    assert len(answer["data"][0]["embedding"]) == 2
    assert Decimal(str(answer["usage"]["cost"])) == Decimal("0.000003") * 2
    assert (await embed(simulator, {"model": "sim/embed", "input": "x"})).status_code == 404
    # Replacing the chat models keeps the embeddings models, and a reset restores both.
    await simulator.configure(models=[{"id": "a/chat", "prompt": "0", "completion": "0"}])
    assert (await embed(simulator, {"model": "a/tiny-embed", "input": "x"})).status_code == 200
    await simulator.reset()
    assert (await embed(simulator, {"model": "sim/embed", "input": "x"})).status_code == 200
