"""Labels by vote: `--vote MODELS` sends each record to every model listed, stores every answer, and gives each
record the majority of each field, the agreement, ties said as such, and each model's answer; the records the
models disagree on can be had apart; `orbatch score` scores the labels against a gold field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.simulator.replies import fake_instance
from tests.support import Simulator, Workers, run_cli, write_jsonl

LABEL = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["good", "bad"]}},
    "required": ["label"],
    "additionalProperties": False,
}
TEMPLATE = "Label this review: {text}"
REVIEWS = ["fine food", "cold soup", "kind staff", "long wait", "fair price", "loud room"]


def simulated_label(review: str) -> str:
    """The label every simulated model gives this review unless told otherwise."""
    value = fake_instance(LABEL, TEMPLATE.replace("{text}", review))
    return str(value["label"])


def other(label: str) -> str:
    return "bad" if label == "good" else "good"


async def vote(
    env: dict[str, str], tmp_path: Path, voters: str, *options: str, gold: dict[str, str] | None = None
) -> str:
    """Submit the reviews with --vote and work them with one burst worker; the batch id."""
    rows = [{"id": f"r{i}", "text": t, **({"truth": gold[t]} if gold else {})} for i, t in enumerate(REVIEWS)]
    path = write_jsonl(tmp_path / "reviews.jsonl", rows)
    schema = tmp_path / "label.json"
    schema.write_bytes(orjson.dumps(LABEL))
    done = run_cli(
        env, "submit", str(path), "--template", TEMPLATE, "--json-schema", str(schema), "--vote", voters,
        "--json", *options,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    workers = Workers(env, tmp_path, 1, "--burst")
    assert await workers.wait(90) == [0], workers.output()[-3000:]
    return str(orjson.loads(done.stdout)["id"])


def records(env: dict[str, str], batch_id: str, *options: str) -> list[dict[str, Any]]:
    done = run_cli(env, "results", batch_id, "--format", "records", *options)
    assert done.returncode == 0, done.stderr
    return [orjson.loads(line) for line in done.stdout.splitlines()]


async def script_one_dissent(simulator: Simulator, review: str) -> None:
    """The first model asked about `review` gives the other label; the rest give the usual one."""
    dissent = orjson.dumps({"label": other(simulated_label(review))}).decode()
    await simulator.configure(rules=[{"match": review, "kind": "reply", "content": dissent, "times": 1}])


@pytest.mark.slow
async def test_a_vote_sends_each_record_to_every_model_and_keeps_the_majority_agreement_and_each_answer(
    env: dict[str, str], engine: AsyncEngine, simulator: Simulator, tmp_path: Path
) -> None:
    await script_one_dissent(simulator, "cold soup")
    batch_id = await vote(env, tmp_path, "sim/echo,sim/backup,sim/spare")
    sent = [
        (c["body"].get("models") or [c["body"]["model"]], c["body"]["messages"][-1]["content"])
        for c in await simulator.calls()
    ]
    for review in REVIEWS:
        asked = sorted(m for models, prompt in sent if review in prompt for m in models)
        assert asked == ["sim/backup", "sim/echo", "sim/spare"], review
    out = {r["id"]: r for r in records(env, batch_id)}
    assert len(out) == len(REVIEWS)
    soup = out["r1"]
    assert soup["label"] == simulated_label("cold soup")
    assert soup["agreement"] == {"label": pytest.approx(2 / 3, abs=1e-3)}
    assert sorted(a["label"] for a in soup["votes"].values()) == sorted(
        [soup["label"]] * 2 + [other(soup["label"])]
    )
    assert set(soup["votes"]) == {"sim/echo", "sim/backup", "sim/spare"}
    assert "ties" not in soup
    food = out["r0"]
    assert food["label"] == simulated_label("fine food")
    assert food["agreement"] == {"label": 1.0}
    # Progress and cost count every call: three requests a record, each with its attempt and cost.
    status = orjson.loads(run_cli(env, "status", batch_id, "--json").stdout)
    assert status["request_counts"]["total"] == 3 * len(REVIEWS)
    assert status["request_counts"]["completed"] == 3 * len(REVIEWS)
    usage = orjson.loads(run_cli(env, "usage", batch_id, "--json").stdout)
    assert usage["batches"][0]["calls"] == 3 * len(REVIEWS)
    async with engine.connect() as conn:
        spent = (await conn.execute(text("SELECT sum(cost) FROM attempt"))).scalar()
    assert spent is not None
    assert spent > 0
    assert float(usage["batches"][0]["cost"]) == pytest.approx(float(spent))
    assert set(usage["batches"][0]["models"]) == {"sim/echo", "sim/backup", "sim/spare"}


@pytest.mark.slow
async def test_a_tie_is_said_as_such_and_disagreements_come_apart(
    env: dict[str, str], simulator: Simulator, tmp_path: Path
) -> None:
    await script_one_dissent(simulator, "long wait")
    batch_id = await vote(env, tmp_path, "sim/echo,sim/backup")
    out = {r["id"]: r for r in records(env, batch_id)}
    wait = out["r3"]
    assert wait["label"] is None
    assert sorted(wait["ties"]["label"]) == ["bad", "good"]
    assert wait["agreement"] == {"label": 0.5}
    apart = records(env, batch_id, "--disagreements")
    assert [r["id"] for r in apart] == ["r3"]
    # The OpenAI Batch output has a line per call, each naming the model that answered it.
    lines = [orjson.loads(x) for x in run_cli(env, "results", batch_id).stdout.splitlines()]
    assert len(lines) == 2 * len(REVIEWS)
    assert {x["response"]["body"]["model"] for x in lines} == {"sim/echo", "sim/backup"}


@pytest.mark.slow
async def test_score_reports_accuracy_per_class_scores_confusion_each_models_accuracy_and_kappa(
    env: dict[str, str], simulator: Simulator, tmp_path: Path
) -> None:
    await script_one_dissent(simulator, "kind staff")
    # The gold labels: the simulator's own, except one it gets wrong.
    gold = {t: simulated_label(t) for t in REVIEWS}
    gold["fair price"] = other(gold["fair price"])
    batch_id = await vote(env, tmp_path, "sim/echo,sim/backup,sim/spare", gold=gold)
    done = run_cli(env, "score", batch_id, "--gold", "truth", "--json")
    assert done.returncode == 0, done.stderr
    score = orjson.loads(done.stdout)
    assert score["field"] == "label"
    assert score["scored"] == len(REVIEWS)
    assert score["accuracy"] == pytest.approx(5 / 6, abs=1e-3)
    wrong = gold["fair price"]
    assert score["confusion"][wrong][other(wrong)] == 1
    per_class = {c["label"]: c for c in score["classes"]}
    assert per_class[wrong]["recall"] < 1.0
    assert sum(c["support"] for c in score["classes"]) == len(REVIEWS)
    # One model was wrong once more than the others (the dissent on "kind staff").
    assert sorted(score["models"].values()) == pytest.approx([4 / 6, 5 / 6, 5 / 6], abs=1e-3)
    assert score["kappa_kind"] == "fleiss"
    assert score["kappa_records"] == len(REVIEWS)
    assert 0 < score["kappa"] < 1
    table = run_cli(env, "score", batch_id, "--gold", "truth")
    assert "accuracy 83.3%" in table.stdout
    assert "fleiss kappa" in table.stdout


@pytest.mark.slow
async def test_a_vote_of_one_model_or_beside_a_chain_is_refused_before_anything_is_stored(
    env: dict[str, str], engine: AsyncEngine, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", [{"text": "x"}])
    one = run_cli(env, "submit", str(path), "--template", TEMPLATE, "--vote", "sim/echo")
    assert one.returncode == 2
    assert "a vote needs at least two different models" in one.stderr
    both = run_cli(
        env,
        "submit",
        str(path),
        "--template",
        TEMPLATE,
        "--vote",
        "sim/echo,sim/backup",
        "--models",
        "sim/echo",
    )
    assert both.returncode == 2
    assert "--vote or --models, not both" in both.stderr
    twice = run_cli(env, "submit", str(path), "--template", TEMPLATE, "--vote", "sim/echo,sim/echo")
    assert twice.returncode == 2
    assert "a vote needs at least two different models" in twice.stderr
    unknown = run_cli(env, "submit", str(path), "--template", TEMPLATE, "--vote", "sim/echo,sim/nope")
    assert unknown.returncode == 2
    assert "sim/nope" in unknown.stderr
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM batch"))).scalar() == 0


@pytest.mark.slow
async def test_results_disagreements_of_a_batch_that_did_not_vote_says_so(
    env: dict[str, str], tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", [{"text": "x"}])
    done = run_cli(env, "submit", str(path), "--template", TEMPLATE, "--models", "sim/echo", "--json")
    batch_id = orjson.loads(done.stdout)["id"]
    refused = run_cli(env, "results", batch_id, "--disagreements")
    assert refused.returncode == 2
    assert "--disagreements is for a batch submitted with --vote" in refused.stderr


@pytest.mark.slow
async def test_score_refuses_a_gold_field_no_record_has_and_a_batch_of_chat_lines(
    env: dict[str, str], tmp_path: Path
) -> None:
    batch_id = await vote(env, tmp_path, "sim/echo,sim/backup", gold={t: "good" for t in REVIEWS})
    misspelt = run_cli(env, "score", batch_id, "--gold", "truht")
    assert misspelt.returncode == 2
    assert "nothing to score against 'truht'" in misspelt.stderr
    assert "6 no 'truht' in the record" in misspelt.stderr
    chat = write_jsonl(
        tmp_path / "chat.jsonl", [{"custom_id": "a", "messages": [{"role": "user", "content": "hi"}]}]
    )
    done = run_cli(env, "submit", str(chat), "--models", "sim/echo", "--json")
    chat_id = orjson.loads(done.stdout)["id"]
    refused = run_cli(env, "score", chat_id, "--gold", "truth")
    assert refused.returncode == 2
    assert "the batch is of chat lines" in refused.stderr
