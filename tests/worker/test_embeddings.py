"""Embeddings batches run as chat batches do: the same queue, throttle, retries and cost records, answered in
OpenAI's Batch output format, or as records with their vectors."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import Simulator, chat_line, run_cli, write_jsonl

EMBED = "sim/embed"
# sim/embed's vectors have 8 numbers, unless `dimensions` asks for fewer.
DIMENSIONS = 8


def embedding_line(custom_id: str, text_input: Any, **body: Any) -> dict[str, Any]:
    """An OpenAI Batch line for /v1/embeddings."""
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": EMBED, "input": text_input, **body},
    }


async def rows(engine: AsyncEngine, sql: str) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql))).all())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def test_an_embeddings_file_comes_back_in_openais_format_with_its_cost_recorded(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    lines = [embedding_line(f"e{i}", f"document number {i}") for i in range(6)]
    lines.append(embedding_line("many", ["first", "second", "third"]))
    lines.append(embedding_line("short", "cut to four", dimensions=4))
    # A bare body with the text to embed is an embeddings request too.
    lines.append({"custom_id": "bare", "input": "a bare body", "model": EMBED})
    out = tmp_path / "out.jsonl"
    done = run_cli(env, "run", str(write_jsonl(tmp_path / "in.jsonl", lines)), "-o", str(out))
    assert done.returncode == 0, done.stderr
    answers = {line["custom_id"]: line["response"]["body"] for line in read_jsonl(out)}
    assert set(answers) == {f"e{i}" for i in range(6)} | {"many", "short", "bare"}
    assert [len(d["embedding"]) for d in answers["e0"]["data"]] == [DIMENSIONS]
    assert [d["index"] for d in answers["many"]["data"]] == [0, 1, 2]
    assert [len(d["embedding"]) for d in answers["short"]["data"]] == [4]
    # The same text embeds to the same vector: the output holds what was answered, not something made up.
    assert answers["e0"]["data"][0]["embedding"] != answers["e1"]["data"][0]["embedding"]
    calls = await simulator.calls()
    assert len(calls) == 9
    assert all(call["path"].endswith("/embeddings") and call["body"]["model"] == EMBED for call in calls)
    assert all("models" not in call["body"] for call in calls)
    attempts = await rows(engine, "SELECT outcome, prompt_tokens, cost FROM attempt")
    assert len(attempts) == 9
    assert all(a.outcome == "success" and a.prompt_tokens > 0 and a.cost > 0 for a in attempts)
    usage = orjson.loads(run_cli(env, "usage", "--json").stdout)
    assert (usage["total"]["calls"], usage["total"]["prompt_tokens"]) == (
        9,
        sum(a.prompt_tokens for a in attempts),
    )
    assert Decimal(usage["total"]["cost"]) == sum(a.cost for a in attempts)


async def test_an_embeddings_chain_sends_one_model_per_call_and_falls_back_down_it(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(down_models=[EMBED])
    path = write_jsonl(tmp_path / "in.jsonl", [{"custom_id": "x", "input": "fall back"}])
    chain = f"{EMBED},openai/text-embedding-3-small"
    done = run_cli(env, "run", str(path), "--models", chain, "-o", str(tmp_path / "out.jsonl"))
    assert done.returncode == 0, done.stderr
    attempts = await rows(engine, "SELECT models_sent, outcome, model FROM attempt ORDER BY number")
    assert [tuple(a) for a in attempts] == [
        ([EMBED], "fallback", None),
        (["openai/text-embedding-3-small"], "success", "openai/text-embedding-3-small"),
    ]
    assert [c["body"]["model"] for c in await simulator.calls()] == [EMBED, "openai/text-embedding-3-small"]
    [line] = read_jsonl(tmp_path / "out.jsonl")
    assert len(line["response"]["body"]["data"][0]["embedding"]) == 1536


async def test_records_embedded_through_a_template_come_back_with_their_vectors(
    env: dict[str, str], simulator: Simulator, tmp_path: Path
) -> None:
    source = tmp_path / "docs.csv"
    source.write_text("id,title,body\n1,First,the first text\n2,Second,the second text\n")
    out = tmp_path / "embedded.jsonl"
    done = run_cli(
        env, "run", str(source), "--template", "{title}: {body}", "--embed", "--models", EMBED,
        "--format", "records", "-o", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    records = read_jsonl(out)
    assert [(r["id"], r["title"]) for r in records] == [(1, "First"), (2, "Second")]
    assert all(
        len(r["answer"]) == DIMENSIONS and all(isinstance(x, float) for x in r["answer"]) for r in records
    )
    assert sorted(c["body"]["input"] for c in await simulator.calls()) == [
        "First: the first text",
        "Second: the second text",
    ]


def test_a_file_mixing_chat_and_embeddings_lines_is_refused_naming_the_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    lines = [embedding_line("e", "text"), chat_line("c", "hello", model="sim/echo")]
    refused = run_cli(env, "submit", str(write_jsonl(tmp_path / "in.jsonl", lines)))
    assert refused.returncode == 2
    assert "LINE 2: a /v1/chat/completions request in a batch of /v1/embeddings requests" in refused.stderr
    alone = run_cli(env, "submit", str(tmp_path / "in.jsonl"), "--embed")
    assert alone.returncode == 2
    assert "--embed goes with --template" in alone.stderr
    # A chat parameter given for every request has no place in an embeddings request: said, not sent.
    vectors = write_jsonl(tmp_path / "vectors.jsonl", [embedding_line("e", "text")])
    chatty = run_cli(env, "submit", str(vectors), "--temperature", "0.3")
    assert chatty.returncode == 2
    assert "LINE 1: 'temperature' given for every request" in chatty.stderr
    assert "does not apply to an embeddings request" in chatty.stderr


def test_a_model_of_the_other_kind_is_refused_at_submit_naming_the_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    chat_to_embedder = write_jsonl(tmp_path / "chat.jsonl", [chat_line("c", "hello", model=EMBED)])
    refused = run_cli(env, "submit", str(chat_to_embedder))
    assert refused.returncode == 2
    assert "LINE 1: 'sim/embed' is an embedding model (GET /embeddings/models): it does not answer chat" in (
        refused.stderr
    )
    embed_to_chat = write_jsonl(tmp_path / "embed.jsonl", [embedding_line("e", "text")])
    refused = run_cli(env, "submit", str(embed_to_chat), "--models", "sim/echo", "--replace-models")
    assert refused.returncode == 2
    assert "LINE 1: 'sim/echo' is not an embedding model" in refused.stderr
