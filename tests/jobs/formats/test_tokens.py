"""Prompt tokens: OpenAI's models with their own encodings and framing, every other model from its UTF-8 bytes."""

from __future__ import annotations

import math
from typing import Any

import pytest
import toktok

from jobs.formats.tokens import (
    BYTES_PER_TOKEN,
    IMAGE_TOKENS,
    PIECE_CHARS,
    TokenCounter,
    Tokenizer,
    completion_cap,
    prompt_texts,
    tokenizer_for,
)

# OpenAI's cookbook ("How to count tokens with tiktoken"): these messages are 129 prompt tokens to gpt-4 and
# 124 to gpt-4o and gpt-4o-mini, as its API reports them.
COOKBOOK = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain "
        "English.",
    },
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased "
        "leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]


def count(model: str, body: dict[str, Any]) -> int:
    counter = TokenCounter()
    counter.add(model, body)
    return counter.counts()[0]


@pytest.mark.parametrize(
    ("model", "tokenizer"),
    [
        ("openai/gpt-4o-mini", Tokenizer("o200k_base", exact=True)),
        ("openai/gpt-4o-mini:batch", Tokenizer("o200k_base", exact=True)),
        ("openai/gpt-5.4", Tokenizer("o200k_base", exact=True)),
        ("openai/gpt-4.1-nano", Tokenizer("o200k_base", exact=True)),
        ("openai/o4-mini", Tokenizer("o200k_base", exact=True)),
        ("openai/gpt-4", Tokenizer("cl100k_base", exact=True)),
        ("openai/gpt-4-turbo", Tokenizer("cl100k_base", exact=True)),
        ("openai/gpt-3.5-turbo", Tokenizer("cl100k_base", exact=True)),
        ("openai/text-embedding-3-small", Tokenizer("cl100k_base", exact=True)),
        ("openai/text-embedding-3-large:batch", Tokenizer("cl100k_base", exact=True)),
        ("openai/gpt-oss-20b:free", Tokenizer("o200k_base", exact=True)),
        ("qwen/qwen3.5-9b", Tokenizer("approximate", exact=False)),
        ("anthropic/claude-sonnet-4.5", Tokenizer("approximate", exact=False)),
        ("google/gemma-4-31b-it:free", Tokenizer("approximate", exact=False)),
        ("sim/echo", Tokenizer("approximate", exact=False)),
    ],
)
def test_each_model_is_counted_with_its_own_tokenizer_where_orbatch_has_it(
    model: str, tokenizer: Tokenizer
) -> None:
    assert tokenizer_for(model) == tokenizer


def test_messages_are_counted_as_openai_counts_them() -> None:
    assert count("openai/gpt-4", {"messages": COOKBOOK}) == 129
    assert count("openai/gpt-4o", {"messages": COOKBOOK}) == 124
    assert count("openai/gpt-4o-mini", {"messages": COOKBOOK}) == 124


def test_a_model_without_its_tokenizer_is_counted_from_utf8_bytes_on_the_high_side() -> None:
    text = "Grüße aus Köln, 東京から"
    body = {"messages": [{"role": "user", "content": text}]}
    framing = 3 + 3 + 2  # a message, the reply's priming, and "user" (4 bytes, 2 tokens at 3 bytes a token)
    assert count("anthropic/claude-sonnet-4.5", body) == framing + math.ceil(
        len(text.encode()) / BYTES_PER_TOKEN
    )
    cookbook = {"messages": COOKBOOK}
    assert count("anthropic/claude-sonnet-4.5", cookbook) > 1.3 * count("openai/gpt-4o", cookbook)
    assert tokenizer_for("sim/echo").describe() == "approximate (UTF-8 bytes / 3)"


def test_a_requested_schema_tools_and_images_count_too() -> None:
    plain = {"messages": [{"role": "user", "content": "Label this."}]}
    schema = {
        **plain,
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "label",
                "schema": {"type": "object", "properties": {"x": {"type": "string"}}},
            },
        },
    }
    tools = {**plain, "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]}
    image = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Label this."},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                ],
            }
        ]
    }
    base = count("openai/gpt-4o", plain)
    assert count("openai/gpt-4o", schema) > base + 10
    assert count("openai/gpt-4o", tools) > base + 10
    assert count("openai/gpt-4o", image) == base + IMAGE_TOKENS


def test_many_prompts_of_several_tokenizers_come_back_in_the_order_they_were_added() -> None:
    counter = TokenCounter()
    bodies = [{"messages": [{"role": "user", "content": "word " * n}]} for n in range(1, 40)]
    models = ["openai/gpt-4o", "openai/gpt-4", "sim/echo"]
    for i, body in enumerate(bodies):
        counter.add(models[i % 3], body)
    together = counter.counts()
    assert together == [count(models[i % 3], body) for i, body in enumerate(bodies)]
    assert counter.counts() == []


def test_a_long_text_is_counted_in_pieces_as_it_would_be_whole() -> None:
    text = " ".join(f"word{i % 977} and, {i}; more" for i in range(40_000))
    assert len(text) > 10 * PIECE_CHARS
    whole = toktok.batch_count([text], "o200k_base", threads=1)[0]
    assert count("openai/gpt-4o", {"messages": [{"role": "user", "content": text}]}) == pytest.approx(
        whole + count("openai/gpt-4o", {"messages": [{"role": "user", "content": ""}]}), abs=20
    )


@pytest.mark.parametrize(
    ("body", "cap"),
    [
        ({"max_tokens": 50}, 50),
        ({"max_completion_tokens": 80, "max_tokens": 50}, 80),
        ({"max_tokens": 50, "n": 3}, 150),
        ({}, None),
        ({"max_tokens": True}, None),
    ],
)
def test_the_completion_bound_is_the_requests_own(body: dict[str, Any], cap: int | None) -> None:
    assert completion_cap(body) == cap


def test_an_embeddings_body_counts_its_input_and_bounds_no_completion() -> None:
    assert prompt_texts({"input": "one text"}) == (["one text"], 0)
    assert prompt_texts({"input": ["a", "b"]}) == (["a", "b"], 0)
    # Token ids are counted as they are, one list or several.
    assert prompt_texts({"input": [101, 102, 103]}) == ([], 3)
    assert prompt_texts({"input": [[1, 2], [3]]}) == ([], 3)
    assert completion_cap({"input": "x", "max_tokens": 50}) == 0
