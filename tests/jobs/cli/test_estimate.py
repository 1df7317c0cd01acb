"""Knowing the price before paying it: `estimate`, `submit --dry-run`, `run --dry-run`, and `usage` afterwards."""

from __future__ import annotations

import csv
from decimal import Decimal
from pathlib import Path

import orjson
from arq.connections import ArqRedis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.formats.tokens import TokenCounter
from tests.support import ROOT, Simulator, chat_line, fresh_machine_env, run_cli, write_jsonl

MODEL = "openai/gpt-4o-mini"
# Its catalogue prices (USD per token), and its :batch variant's: half.
PROMPT_PRICE, COMPLETION_PRICE = Decimal("0.00000015"), Decimal("0.0000006")
BATCH_PROMPT_PRICE, BATCH_COMPLETION_PRICE = Decimal("0.000000075"), Decimal("0.0000003")

LABELLING = ROOT / "examples" / "labelling"
# The labelling example as examples/labelling/run.sh runs it, with a paid model that has a :batch variant.
LABELLING_OPTIONS = (
    "--template",
    str(LABELLING / "prompt.txt"),
    "--system",
    (LABELLING / "system.txt").read_text(),
    "--json-schema",
    str(LABELLING / "label.schema.json"),
    "--models",
    MODEL,
)


async def nothing_stored(engine: AsyncEngine, redis: ArqRedis) -> bool:
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM batch) + (SELECT count(*) FROM request)"
                    " + (SELECT count(*) FROM attempt) + (SELECT count(*) FROM result)"
                )
            )
        ).scalar_one()
    return rows == 0 and await redis.dbsize() == 0


def reviews(tmp_path: Path) -> Path:
    return write_jsonl(
        tmp_path / "reviews.jsonl",
        [chat_line(f"r{i}", f"Review {i}: the battery lasts all day.", max_tokens=20) for i in range(8)]
        + [chat_line("long", "Review: " + "it broke " * 50)],
    )


async def test_estimate_says_requests_tokens_and_cost_by_lane_and_stores_nothing(
    env: dict[str, str], engine: AsyncEngine, redis: ArqRedis, tmp_path: Path
) -> None:
    path = reviews(tmp_path)
    done = run_cli(env, "estimate", str(path), "--models", MODEL, "--json")
    assert done.returncode == 0, done.stderr
    estimate = orjson.loads(done.stdout)
    counter = TokenCounter()
    for line in path.read_bytes().splitlines():
        counter.add(MODEL, orjson.loads(line))
    prompt = sum(counter.counts())
    # Eight requests bound their answers at 20 tokens; the last sets no bound and is allowed the default.
    completion = 8 * 20 + 1024
    assert estimate["requests"] == 9
    assert (estimate["prompt_tokens"], estimate["completion_tokens"]) == (prompt, completion)
    assert (estimate["completion_assumed"], estimate["completion_default"]) == (1, 1024)
    assert estimate["cost"]["live"] == {
        "low": str(prompt * PROMPT_PRICE),
        "high": str(prompt * PROMPT_PRICE + completion * COMPLETION_PRICE),
    }
    assert estimate["cost"]["batch"] == {
        "low": str(prompt * BATCH_PROMPT_PRICE),
        "high": str(prompt * BATCH_PROMPT_PRICE + completion * BATCH_COMPLETION_PRICE),
    }
    [model] = estimate["models"]
    assert (model["model"], model["requests"], model["tokenizer"], model["exact"]) == (
        MODEL,
        9,
        "o200k_base",
        True,
    )
    assert (model["live"]["price_id"], model["batch"]["price_id"]) == (MODEL, f"{MODEL}:batch")
    assert await nothing_stored(engine, redis)


async def test_submit_dry_run_and_run_dry_run_print_what_estimate_prints(
    env: dict[str, str], engine: AsyncEngine, redis: ArqRedis, tmp_path: Path
) -> None:
    path = reviews(tmp_path)
    printed = [
        run_cli(env, *command, str(path), "--models", MODEL, "--max-tokens", "64", "--json")
        for command in (
            ("estimate",),
            ("submit", "--dry-run"),
            ("run", "-o", str(tmp_path / "out"), "--dry-run"),
        )
    ]
    assert [p.returncode for p in printed] == [0, 0, 0], [p.stderr for p in printed]
    assert printed[0].stdout == printed[1].stdout == printed[2].stdout
    # --max-tokens is every request's bound unless its line sets one.
    assert orjson.loads(printed[0].stdout)["completion_tokens"] == 8 * 20 + 64
    assert not (tmp_path / "out").exists()
    assert await nothing_stored(engine, redis)


async def test_a_bad_file_is_refused_in_submits_words_and_nothing_is_stored(
    env: dict[str, str], engine: AsyncEngine, redis: ArqRedis, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line("a", "x"), b"nope", chat_line("a", "y")])
    estimated = run_cli(env, "estimate", str(path), "--models", "sim/echo")
    submitted = run_cli(env, "submit", str(path), "--models", "sim/echo")
    assert estimated.returncode == submitted.returncode == 2
    assert "LINE 2: not valid JSON" in estimated.stderr
    assert 'LINE 3: duplicate custom_id "a" (first on line 1)' in estimated.stderr
    # The same words, after the line saying what each command does with the file, but for what was not done.
    assert estimated.stderr.splitlines()[1:] == [
        line.replace("nothing was queued", "nothing was estimated").replace("to queue", "to estimate")
        for line in submitted.stderr.splitlines()[1:]
    ]
    assert (
        "nothing was estimated (fix them, or pass --skip-invalid to estimate the good lines)"
        in estimated.stderr
    )
    unknown = run_cli(env, "estimate", str(path), "--models", "sim/typo")
    assert unknown.returncode == 2
    assert "unknown model 'sim/typo'" in unknown.stderr
    skipped = run_cli(env, "estimate", str(path), "--models", "sim/echo", "--skip-invalid", "--json")
    assert skipped.returncode == 0, skipped.stderr
    assert "skipped LINE 2: not valid JSON" in skipped.stderr
    assert (orjson.loads(skipped.stdout)["requests"], orjson.loads(skipped.stdout)["invalid"]) == (1, 2)
    assert await nothing_stored(engine, redis)


async def test_a_records_file_of_free_requests_says_the_free_tiers_days(
    env: dict[str, str], simulator: Simulator, engine: AsyncEngine, redis: ArqRedis, tmp_path: Path
) -> None:
    await simulator.configure(free_per_day=50)
    path = tmp_path / "reviews.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text"])
        writer.writerows([i, f"review {i}"] for i in range(120))
    done = run_cli(env, "estimate", str(path), "--template", "Label: {text}", "--models", "sim/echo:free")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "reviews.csv: 120 requests (nothing stored)" in out
    assert "sim/echo:free (free)" in out
    assert "$0.000000" in out
    assert "approximate (UTF-8 bytes / 3)" in out
    assert "120 requests set no max_tokens: each is allowed 1,024 completion tokens" in out
    assert "120 free requests need 3 days of quota at 50 a day (the simulator's GET /key)" in out
    assert "batch API not available for sim/echo:free" not in out
    assert await nothing_stored(engine, redis)


async def test_the_labelling_example_costs_what_its_estimate_said_and_usage_shows_both(
    env: dict[str, str], engine: AsyncEngine, tmp_path: Path
) -> None:
    data = str(ROOT / "examples" / "data" / "spam.jsonl")
    estimated = run_cli(env, "estimate", data, *LABELLING_OPTIONS, "--json")
    assert estimated.returncode == 0, estimated.stderr
    estimate = orjson.loads(estimated.stdout)
    ran = run_cli(
        env, "run", data, "-o", str(tmp_path / "labels.jsonl"), "--name", "spam", *LABELLING_OPTIONS
    )
    assert ran.returncode == 0, ran.stderr
    usage = orjson.loads(run_cli(env, "usage", "spam", "--json").stdout)
    [batch] = usage["batches"]
    # The batch kept the estimate the dry run gave (the free tier's quota is read by `estimate` alone).
    assert batch["estimate"] == {**estimate, "free_tier": {**estimate["free_tier"], "source": None}}
    live = estimate["cost"]["live"]
    actual = Decimal(batch["cost"])
    assert Decimal(live["low"]) <= actual <= Decimal(live["high"]), (live, actual)
    assert batch["requests"] == estimate["requests"] == 300
    # The prompt is counted high (the simulator counts a token per 4 characters of the last user message, not the
    # system message, the schema or the framing); the answers are far below their bound (none set max_tokens).
    assert estimate["prompt_tokens"] >= batch["prompt_tokens"]
    assert batch["completion_tokens"] < estimate["completion_tokens"]
    shown = run_cli(env, "usage", "spam")
    assert "estimated when submitted, and actual" in shown.stdout
    assert f"{estimate['prompt_tokens']:,}" in shown.stdout
    assert "(within the estimate)" in shown.stdout


def test_without_the_model_check_prices_still_come_from_the_catalogue_and_an_unlisted_id_has_none(
    env: dict[str, str], tmp_path: Path
) -> None:
    path = reviews(tmp_path)
    listed = run_cli(env, "estimate", str(path), "--models", MODEL, "--no-check-models", "--json")
    assert listed.returncode == 0, listed.stderr
    assert orjson.loads(listed.stdout)["cost"]["live"] is not None
    unlisted = run_cli(env, "estimate", str(path), "--models", "sim/typo", "--no-check-models")
    assert unlisted.returncode == 0, unlisted.stderr
    [row] = [line for line in unlisted.stdout.splitlines() if "sim/typo" in line and "│" in line]
    assert "unknown price" in row
    assert "not available" in row


def test_a_trial_without_a_key_is_priced_from_the_simulators_list(data_dir: Path, tmp_path: Path) -> None:
    # A machine with no services and no key, as the quick start's: the simulator started for the estimate
    # prices OpenAI's names as OpenRouter's ids, and the embeddings file at its input alone.
    env = fresh_machine_env(data_dir)
    chat = write_jsonl(
        tmp_path / "chat.jsonl",
        [chat_line(f"c{i}", "hello there", model="gpt-4o-mini", max_tokens=10) for i in range(3)],
    )
    done = run_cli(env, "estimate", str(chat), "--simulator", "--json")
    assert done.returncode == 0, done.stderr
    found = orjson.loads(done.stdout)
    [model] = found["models"]
    assert (model["model"], model["requests"], model["tokenizer"]) == (MODEL, 3, "o200k_base")
    assert Decimal(model["live"]["high"]) > Decimal(model["batch"]["high"]) > 0
    vectors = write_jsonl(
        tmp_path / "vectors.jsonl", [{"custom_id": "v", "input": "embed me", "model": "sim/embed"}]
    )
    shown = run_cli(env, "estimate", str(vectors), "--simulator")
    assert shown.returncode == 0, shown.stderr
    assert "of the input alone (an embeddings request completes nothing)" in shown.stdout + shown.stderr
