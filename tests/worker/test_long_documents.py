"""Summaries of any length (`--long split`): a record too long for every model of its chain is summarised in
parts inside its batch (its text cut into overlapping chunks, each summarised, the summaries combined, level by
level when they do not fit one call), one request with one result, its calls counted and its cost summed."""

from __future__ import annotations

import asyncio
import collections
import itertools
import signal
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import Simulator, Workers, run_cli, write_jsonl

TEMPLATE = "Sum up: {text}"
# sim/small holds 512 tokens: with 100 for the answer, a chunk holds about 370 tokens as orbatch counts them
# (UTF-8 bytes / 3: some 1,100 characters), and an answer (the simulator echoes the prompt, cut at max_tokens:
# 400 characters) leaves room for two summaries in a combine, not three.
OPTIONS = ("--models", "sim/small", "--max-tokens", "100", "--template", TEMPLATE)


def document(sentences: int, tag: str = "") -> str:
    """Distinct sentences, five to a paragraph: every chunk, and so every prompt, is its own."""
    said = [
        f"Sentence {i}{tag} of the address speaks of matter {i * 7 % 13} at some length."
        for i in range(sentences)
    ]
    return "\n\n".join(" ".join(said[i : i + 5]) for i in range(0, sentences, 5))


async def rows(engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).all())


def submit(env: dict[str, str], tmp_path: Path, records: list[dict[str, Any]], *args: str) -> str:
    path = write_jsonl(tmp_path / "docs.jsonl", records)
    done = run_cli(env, "submit", str(path), "--json", *OPTIONS, *args)
    assert done.returncode == 0, done.stderr
    return str(orjson.loads(done.stdout)["id"])


async def run(env: dict[str, str], tmp_path: Path) -> None:
    workers = Workers(env, tmp_path, 1, "--burst")
    assert await workers.wait(120) == [0], workers.output()[-3000:]


def prompts(calls: list[dict[str, Any]]) -> list[str]:
    return [c["body"]["messages"][-1]["content"] for c in calls if c["path"].endswith("/chat/completions")]


def test_without_long_split_a_record_too_long_for_every_model_is_still_refused_at_submit(
    env: dict[str, str], tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": document(40)}, {"text": "short"}])
    done = run_cli(env, "submit", str(path), *OPTIONS)
    assert done.returncode == 2, done.stdout
    assert "LINE 1: the prompt and its max_tokens" in done.stderr
    assert "fit no model of its chain: sim/small (context 512)" in done.stderr
    assert "LINE 2" not in done.stderr
    # With it, a record so long that not even a part fits beside the template and max_tokens is still refused.
    done = run_cli(
        env, "submit", str(path), *OPTIONS[:2], "--max-tokens", "480", *OPTIONS[4:], "--long", "split"
    )
    assert done.returncode == 2, done.stdout
    assert "LINE 1:" in done.stderr
    assert "with --long split, even a part of it cannot fit" in done.stderr
    # The estimate counts a split record's parts (chunks and combines, roughly) as requests.
    done = run_cli(env, "estimate", str(path), *OPTIONS, "--long", "split", "--json")
    assert done.returncode == 0, done.stderr
    estimate = orjson.loads(done.stdout)
    assert estimate["requests"] >= 1 + 5, estimate
    whole = orjson.loads(
        run_cli(
            env,
            "estimate",
            str(path),
            "--models",
            "sim/echo",
            "--template",
            TEMPLATE,
            "--max-tokens",
            "100",
            "--json",
        ).stdout
    )
    assert estimate["prompt_tokens"] > whole["prompt_tokens"]
    # The field cut must be one the template fills; a chat line has none.
    done = run_cli(env, "submit", str(path), *OPTIONS, "--long", "split", "--long-field", "title")
    assert done.returncode == 2, done.stdout
    assert "no string field 'title' that the template uses to split" in done.stderr
    done = run_cli(env, "submit", str(path), "--models", "sim/small", "--long", "split")
    assert done.returncode == 2, done.stdout
    assert "--long split goes with --template" in done.stderr


@pytest.mark.slow
async def test_a_document_too_long_for_every_model_is_summarised_in_parts_and_combined(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    long_text = document(40)
    batch_id = submit(
        env, tmp_path, [{"id": 1, "text": long_text}, {"id": 2, "text": "A short one."}], "--long", "split"
    )
    requests = await rows(engine, "SELECT split_tokens, context_needed, status FROM request ORDER BY line_no")
    assert requests[0].split_tokens is not None
    # Its largest part fits sim/small: the lease's context skip leaves the model in its window.
    assert requests[0].context_needed <= 512
    assert requests[1].split_tokens is None
    await run(env, tmp_path)

    attempts = await rows(
        engine,
        "SELECT r.line_no, a.part, a.outcome, a.cost, a.reply FROM attempt a JOIN request r ON r.id = a.request_id"
        " ORDER BY r.line_no, a.number",
    )
    parts = [a.part for a in attempts if a.line_no == 1]
    assert parts == ["chunk 1/3", "chunk 2/3", "chunk 3/3", "combine 1.1/1", "final"]
    assert {a.outcome for a in attempts} == {"success"}
    # A part's answer is kept on its attempt; the final one is the request's result.
    assert all(a.reply for a in attempts if a.part not in (None, "final"))
    assert [a.part for a in attempts if a.line_no == 2] == [None]

    sent = prompts(await simulator.calls())
    assert len(sent) == 6
    chunks = [
        p.removeprefix("Sum up: ")
        for p in sent
        if "Not the document itself" not in p and p != "Sum up: A short one."
    ]
    assert len(chunks) == 3
    # The chunks cover the text in order, each ending at a paragraph's end, and overlap by whole sentences.
    assert long_text.startswith(chunks[0])
    assert long_text.endswith(chunks[-1])
    for before, after in itertools.pairwise(chunks):
        assert before.endswith("\n\n")
        shared = next((k for k in range(len(after), 0, -1) if before.endswith(after[:k])), 0)
        assert after[:shared].startswith("Sentence ")
        assert after[:shared].rstrip().endswith("at some length.")
    combines = [p for p in sent if "Not the document itself" in p]
    assert len(combines) == 2
    assert "2 summaries of consecutive parts of one document, in order" in combines[0]

    status = orjson.loads(run_cli(env, "status", batch_id, "--json").stdout)
    assert status["status"] == "completed"
    assert status["request_counts"]["total"] == 2
    assert status["request_counts"]["completed"] == 2
    usage = orjson.loads(run_cli(env, "usage", batch_id, "--json").stdout)
    paid = sum(Decimal(a.cost) for a in attempts)
    assert Decimal(usage["batches"][0]["cost"]) == paid
    assert Decimal(usage["batches"][0]["cost"]) > 0

    out = tmp_path / "out.jsonl"
    done = run_cli(env, "results", batch_id, "-o", str(out), "--format", "records")
    assert done.returncode == 0, done.stderr
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    # Every record of the batch says how many calls made its answer: one for the record sent whole.
    assert [(r["id"], r["calls"]) for r in lines] == [(1, 5), (2, 1)]
    assert lines[0]["answer"].startswith("echo: Sum up: [Not the document itself")
    batch_out = tmp_path / "batch.jsonl"
    assert run_cli(env, "results", batch_id, "-o", str(batch_out)).returncode == 0
    first = orjson.loads(batch_out.read_bytes().splitlines()[0])
    # The OpenAI batch output line is the final call's response.
    assert first["response"]["body"]["choices"][0]["message"]["content"] == lines[0]["answer"]


@pytest.mark.slow
async def test_summaries_that_do_not_fit_one_combine_are_combined_in_groups_level_by_level(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    submit(env, tmp_path, [{"text": document(110)}], "--long", "split")
    await run(env, tmp_path)
    parts = [a.part for a in await rows(engine, "SELECT part FROM attempt ORDER BY number")]
    chunks = [p for p in parts if p.startswith("chunk ")]
    combines = [p for p in parts if p.startswith("combine ")]
    assert len(chunks) >= 7
    assert parts[: len(chunks)] == [f"chunk {i}/{len(chunks)}" for i in range(1, len(chunks) + 1)]
    # Two summaries to a combine: several levels before the final call.
    levels = collections.Counter(p.split()[1].split(".")[0] for p in combines)
    assert len(levels) >= 2
    assert levels["1"] == len(chunks) // 2
    assert parts[-1] == "final"
    assert len(parts) == len(set(parts))
    assert len(prompts(await simulator.calls())) == len(parts)
    (result,) = await rows(
        engine,
        "SELECT r.status, count(res.*) AS results FROM request r LEFT JOIN result res ON res.request_id = r.id GROUP BY 1",
    )
    assert tuple(result) == ("completed", 1)


async def until_rows(engine: AsyncEngine, sql: str, target: int, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while (await rows(engine, sql))[0][0] < target:
        assert time.monotonic() < deadline, f"{sql} never reached {target}"
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_a_worker_killed_mid_document_leaves_a_new_worker_no_answered_part_to_pay_again(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await simulator.configure(latency_ms=150)
    env = {**env, "ORBATCH_LEASE_SECONDS": "2", "ORBATCH_REQUEUE_AFTER": "5"}
    submit(env, tmp_path, [{"text": document(110)}], "--long", "split")
    workers = Workers(env, tmp_path, 1, "--concurrency", "1")
    first = workers.processes[0]
    try:
        # Killed for real once four parts are answered and the next is being asked.
        await until_rows(engine, "SELECT count(*) FROM attempt WHERE outcome = 'success'", 4)
        await until_rows(engine, "SELECT count(*) FROM attempt WHERE outcome = 'in_flight'", 1)
        first.send_signal(signal.SIGKILL)
        await asyncio.to_thread(first.wait, 30)
        answered_before = {
            r.part for r in await rows(engine, "SELECT part FROM attempt WHERE outcome = 'success'")
        }
        assert len(answered_before) >= 4
        second = Workers(env, tmp_path, 1, "--burst")
        assert await second.wait(180) == [0], second.output()[-3000:]
    finally:
        workers.kill()
    attempts = await rows(engine, "SELECT part, outcome FROM attempt ORDER BY number")
    answered = collections.Counter(a.part for a in attempts if a.outcome == "success")
    assert answered["final"] == 1
    assert set(answered.values()) == {1}, "every part answered once"
    assert answered_before <= set(answered)
    abandoned = [a.part for a in attempts if a.outcome == "abandoned"]
    assert len(abandoned) == 1
    # The simulator was asked each prompt once, but for the call the kill cut off, asked again by the new
    # worker; no part answered before the kill was asked again.
    asked = collections.Counter(prompts(await simulator.calls()))
    assert sum(asked.values()) <= len(answered) + len(abandoned)
    repeated = [p for p, n in asked.items() if n > 1]
    assert len(repeated) <= 1
    assert all(n <= 2 for n in asked.values())
    (status,) = await rows(engine, "SELECT status FROM request")
    assert status.status == "completed"
