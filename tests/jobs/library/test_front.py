"""The Python front: each kind of table in, the same kind out, rows in order, answers and errors beside them."""

from __future__ import annotations

import asyncio
import functools
import gc
import gzip
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import datasets
import orjson
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

import orbatch
from jobs.core.settings import get_settings
from tests.support import Simulator

MODEL = "meta-llama/llama-3.3-70b-instruct:free"
TEMPLATE = "Label this review: {text}"

pytestmark = [
    pytest.mark.xdist_group("front"),
    # arq's worker, closed in this long-lived process, can leave a Redis socket whose connect or heartbeat was
    # cancelled for the garbage collector to close (a process that exits, as `orbatch run`, never shows it).
    # Known and left for now: the sockets are closed when collected, nothing else is held.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]


class Label(BaseModel):
    sentiment: Literal["positive", "negative", "neutral"]
    stars: int


def rows(n: int = 12) -> list[dict[str, Any]]:
    # Row 4 asks for something the simulator refuses: its row carries the error, the others their answers.
    return [
        {
            "id": i,
            "text": "broken review" if i == 4 else f"review {i}",
            "score": None if i % 3 == 0 else i / 2,
        }
        for i in range(n)
    ]


@pytest.fixture
async def front(
    env: dict[str, str], simulator: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """The process's environment as a user would set it before `import orbatch`, and a fresh session."""
    await simulator.configure(rules=[{"match": "broken", "kind": "status", "status": 400, "message": "bad"}])
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("ORBATCH_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield
    await asyncio.to_thread(orbatch.close)
    get_settings.cache_clear()
    # What the closed worker left for the collector is collected here, not in a later test (see pytestmark).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def call(**extra: Any) -> dict[str, Any]:
    return {"template": TEMPLATE, "models": MODEL, "progress": False, **extra}


def test_the_public_names_are_pinned() -> None:
    assert orbatch.__all__ == [
        "BadInput",
        "Batch",
        "BatchSummary",
        "Estimate",
        "NeedsPerson",
        "OrbatchError",
        "ServiceUnavailable",
        "aestimate",
        "arun",
        "asubmit",
        "batch",
        "close",
        "estimate",
        "run",
        "submit",
    ]


async def test_a_list_of_dicts_comes_back_in_order_with_answers_and_the_failed_row_says_why(
    front: None,
) -> None:
    out = await asyncio.to_thread(functools.partial(orbatch.run, rows(), schema=Label, **call()))
    assert [r["id"] for r in out] == list(range(12))
    assert all(
        r["error"] is None and r["sentiment"] in {"positive", "negative", "neutral"}
        for r in out
        if r["id"] != 4
    )
    assert isinstance(out[0]["stars"], int)
    assert out[0]["score"] is None
    failed = out[4]
    assert failed["sentiment"] is None
    assert "400" in failed["error"]


async def test_a_pandas_frame_keeps_its_dtypes_and_gets_typed_answer_columns(front: None) -> None:
    frame = pd.DataFrame(rows())
    out = await asyncio.to_thread(functools.partial(orbatch.run, frame, schema=Label, **call()))
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns)[:3] + sorted(out.columns[3:5]) + list(out.columns[5:]) == [
        "id",
        "text",
        "score",
        "sentiment",
        "stars",
        "error",
    ]
    assert out["id"].tolist() == list(range(12))
    assert out["id"].dtype == frame["id"].dtype
    assert str(out["stars"].dtype) == "Int64"
    assert pd.isna(out.loc[4, "stars"])
    assert out["error"].isna().sum() == 11


async def test_a_polars_frame_an_arrow_table_and_a_dataset_come_back_as_themselves(front: None) -> None:
    data = rows()
    polars = await asyncio.to_thread(functools.partial(orbatch.run, pl.DataFrame(data), **call()))
    assert isinstance(polars, pl.DataFrame)
    assert polars["id"].to_list() == list(range(12))
    assert polars.schema["answer"] == pl.String
    assert polars["answer"][1].startswith("echo:")
    arrow = await asyncio.to_thread(
        functools.partial(orbatch.run, pa.Table.from_pylist(data), schema=Label, **call())
    )
    assert isinstance(arrow, pa.Table)
    assert arrow.schema.field("stars").type == pa.int64()
    assert arrow.column("error").null_count == 11
    dataset = await asyncio.to_thread(
        functools.partial(orbatch.run, datasets.Dataset.from_list(data), **call())
    )
    assert isinstance(dataset, datasets.Dataset)
    assert dataset["id"] == list(range(12))
    assert dataset[4]["answer"] is None
    assert "400" in dataset[4]["error"]


async def test_paths_of_each_format_give_back_a_results_file_of_the_same_format(
    front: None, tmp_path: Path
) -> None:
    data = rows()
    jsonl = tmp_path / "reviews.jsonl.gz"
    jsonl.write_bytes(gzip.compress(b"".join(orjson.dumps(r) + b"\n" for r in data)))
    csv = tmp_path / "reviews.csv"
    pd.DataFrame(data).to_csv(csv, index=False)
    parquet = tmp_path / "reviews.parquet"
    pq.write_table(pa.Table.from_pylist(data), parquet)
    for path, expected in (
        (jsonl, "reviews.results.jsonl"),
        (csv, "reviews.results.csv"),
        (parquet, "reviews.results.parquet"),
    ):
        out = await asyncio.to_thread(functools.partial(orbatch.run, path, **call()))
        assert out == tmp_path / expected
    back = pq.read_table(tmp_path / "reviews.results.parquet").to_pylist()
    assert [r["id"] for r in back] == list(range(12))
    assert back[0]["score"] is None
    assert back[1]["score"] == 0.5
    assert back[4]["answer"] is None
    assert "400" in back[4]["error"]
    lines = [orjson.loads(line) for line in (tmp_path / "reviews.results.jsonl").read_bytes().splitlines()]
    assert [r["id"] for r in lines] == list(range(12))


async def test_chat_request_rows_run_without_a_template(front: None) -> None:
    requests = [
        {"custom_id": f"q{i}", "messages": [{"role": "user", "content": f"hi {i}"}]} for i in range(3)
    ]
    out = await asyncio.to_thread(functools.partial(orbatch.run, requests, models=MODEL, progress=False))
    assert [r["answer"] for r in out] == [f"echo: hi {i}" for i in range(3)]


async def test_a_frames_texts_are_embedded_with_a_vector_beside_each_row(front: None) -> None:
    frame = pd.DataFrame({"id": [1, 2, 3], "text": ["alpha", "beta", "gamma"]})
    out = await asyncio.to_thread(
        functools.partial(
            orbatch.run, frame, template="{text}", embed=True, models="sim/embed", progress=False
        )
    )
    assert list(out.columns)[:3] + sorted(out.columns[3:5]) + list(out.columns[5:]) == [
        "id",
        "text",
        "answer",
        "error",
    ]
    assert [len(v) for v in out["answer"]] == [8, 8, 8]
    assert out["error"].isna().all()
    # Rows that are embeddings requests already (an `input` each) need no template.
    requests = [{"custom_id": "a", "input": "alpha"}, {"custom_id": "b", "input": ["beta", "gamma"]}]
    answered = await asyncio.to_thread(
        functools.partial(orbatch.run, requests, models="sim/embed", progress=False)
    )
    assert answered[0]["answer"] == out["answer"][0]
    assert [len(v) for v in answered[1]["answer"]] == [8, 8]


async def test_a_pydantic_schema_is_sent_strict_and_answers_come_back_as_instances(
    front: None, simulator: Simulator
) -> None:
    handle = await asyncio.to_thread(functools.partial(orbatch.submit, rows(3), schema=Label, **call()))
    await asyncio.to_thread(handle.wait, progress=False)
    answers = await asyncio.to_thread(handle.answers)
    assert all(isinstance(a, Label) for a in answers)
    sent = (await simulator.calls())[0]["body"]["response_format"]["json_schema"]
    assert sent["name"] == "Label"
    assert sent["strict"] is True
    assert sent["schema"]["additionalProperties"] is False
    assert sent["schema"]["required"] == [
        "sentiment",
        "stars",
    ]


async def test_feedback_and_heal_are_options_of_the_python_front(front: None, simulator: Simulator) -> None:
    broken = '{"sentiment": "pos'
    await simulator.configure(rules=[{"match": "review 1", "kind": "reply", "content": broken, "times": 1}])
    submit = functools.partial(orbatch.submit, rows(3), schema=Label, feedback=False, heal=True, **call())
    handle = await asyncio.to_thread(submit)
    await asyncio.to_thread(handle.wait, progress=False)
    bodies = [c["body"] for c in await simulator.calls() if "review 1" in str(c["body"]["messages"])]
    # Without feedback the retry is the same prompt; healing and routing go with every schema request.
    assert len(bodies) == 2
    assert bodies[0] == bodies[1]
    assert bodies[0]["plugins"] == [{"id": "response-healing"}]
    assert bodies[0]["provider"] == {"require_parameters": True}
    usage = await asyncio.to_thread(handle.usage)
    assert usage["total"]["corrected"] == 1


async def test_run_works_from_inside_a_running_event_loop_and_its_async_twin_too(front: None) -> None:
    # A notebook's kernel runs an event loop: the blocking call must not refuse to run under it.
    asyncio.get_running_loop()
    blocking = orbatch.run(rows(3), **call())
    awaited = await orbatch.arun(rows(3), **call())
    assert [r["answer"] for r in blocking] == [r["answer"] for r in awaited]
    handle = await orbatch.asubmit(rows(5), **call(name="async-twin"))
    assert orbatch.batch("async-twin").id == handle.id


async def test_run_works_from_a_thread(front: None) -> None:
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(orbatch.run(rows(4), **call())))
    thread.start()
    await asyncio.to_thread(thread.join, 120)
    assert [r["id"] for r in results[0]] == [0, 1, 2, 3]


async def test_the_same_data_again_is_the_same_batch_and_nothing_is_called_twice(
    front: None, simulator: Simulator
) -> None:
    first = await asyncio.to_thread(functools.partial(orbatch.submit, pd.DataFrame(rows()), **call()))
    await asyncio.to_thread(first.wait, progress=False)
    calls = len(await simulator.calls())
    again = await asyncio.to_thread(functools.partial(orbatch.run, pd.DataFrame(rows()), **call()))
    assert len(await simulator.calls()) == calls
    assert (await asyncio.to_thread(orbatch.batch, first.id)).id == first.id
    assert again["answer"].tolist()[:2] == [
        "echo: Label this review: review 0",
        "echo: Label this review: review 1",
    ]
    status = await asyncio.to_thread(first.status)
    assert (status.counts["completed"], status.counts["failed"]) == (11, 1)
    usage = await asyncio.to_thread(first.usage)
    assert usage["total"]["requests"] >= 11


async def test_a_submitted_batch_is_read_again_by_name_as_records_or_as_a_table(front: None) -> None:
    handle = await asyncio.to_thread(
        functools.partial(orbatch.submit, rows(4), schema=Label, **call(name="reviews"))
    )
    await asyncio.to_thread(handle.wait, progress=False)
    again = await asyncio.to_thread(orbatch.batch, "reviews")
    records = await asyncio.to_thread(again.results)
    assert [r["id"] for r in records] == [0, 1, 2, 3]
    assert set(records[0]) >= {"sentiment", "stars", "error"}
    frame = await asyncio.to_thread(again.results, pd.DataFrame(rows(4)))
    assert isinstance(frame, pd.DataFrame)
    assert frame["sentiment"].notna().all()


async def test_an_answer_field_named_like_a_column_never_overwrites_it(front: None) -> None:
    data = [{"text": f"review {i}", "sentiment": "gold"} for i in range(3)]
    out = await asyncio.to_thread(functools.partial(orbatch.run, data, schema=Label, **call()))
    assert all(r["sentiment"] == "gold" and r["sentiment_answer"] for r in out)


async def test_bad_input_is_said_before_anything_is_stored(front: None) -> None:
    with pytest.raises(orbatch.BadInput, match="give template="):
        await asyncio.to_thread(functools.partial(orbatch.run, rows(), models=MODEL, progress=False))
    with pytest.raises(orbatch.BadInput, match="row 2 is str"):
        await asyncio.to_thread(functools.partial(orbatch.run, [{"text": "a"}, "b"], **call()))
    with pytest.raises(orbatch.BadInput, match=r"cannot take a builtins\.int"):
        await asyncio.to_thread(functools.partial(orbatch.run, 5, **call()))
    with pytest.raises(orbatch.BadInput, match="record has no field 'text'"):
        await asyncio.to_thread(functools.partial(orbatch.run, [{"body": "no text"}], **call()))
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_atempts'"):
        await asyncio.to_thread(functools.partial(orbatch.run, rows(), max_atempts=3, **call()))


async def test_estimate_takes_submits_arguments_says_the_price_and_stores_nothing(
    front: None, simulator: Simulator, engine: AsyncEngine
) -> None:
    await simulator.configure(free_per_day=5)
    estimate = await asyncio.to_thread(functools.partial(orbatch.estimate, rows(), schema=Label, **call()))
    assert isinstance(estimate, orbatch.Estimate)
    assert estimate.requests == 12
    [model] = estimate.models
    assert (model.model, model.free, model.completion_assumed) == (MODEL, True, 12)
    assert estimate.live is not None
    assert estimate.live.high == 0
    assert (estimate.free_tier.requests, estimate.free_tier.days) == (12, 3)
    paid = await orbatch.aestimate(pd.DataFrame(rows()), max_tokens=10, **call(models="openai/gpt-4o-mini"))
    assert paid.models[0].tokenizer == "o200k_base"
    assert paid.completion_tokens == 120
    assert paid.live is not None
    assert paid.batch is not None
    # OpenRouter's Batch API prices gpt-4o-mini at half.
    assert paid.batch.high * 2 == paid.live.high
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM batch"))).scalar_one() == 0


async def test_a_vote_from_python_gives_each_row_the_majority_agreement_and_answers_and_scores_it(
    front: None, engine: AsyncEngine, simulator: Simulator
) -> None:
    frame = pd.DataFrame(
        {"id": [1, 2, 3], "text": ["fine food", "cold soup", "kind staff"], "truth": "positive"}
    )
    handle = await asyncio.to_thread(
        functools.partial(
            orbatch.submit,
            frame,
            template=TEMPLATE,
            schema=Label,
            vote=["sim/echo", "sim/backup"],
            gold="truth",
        )
    )
    await asyncio.to_thread(handle.wait, progress=False)
    out = await asyncio.to_thread(handle.results)
    assert list(out.columns)[:3] + sorted(out.columns[3:5]) + list(out.columns[5:]) == [
        "id", "text", "truth", "sentiment", "stars", "agreement", "ties", "votes", "error",
    ]  # fmt: skip
    assert all(set(v) == {"sim/echo", "sim/backup"} for v in out["votes"])
    assert all(a == {"sentiment": 1.0, "stars": 1.0} for a in out["agreement"])
    assert out["error"].isna().all()
    sent = sorted((c["body"].get("models") or [c["body"].get("model")])[0] for c in await simulator.calls())
    assert sent == ["sim/backup"] * 3 + ["sim/echo"] * 3
    score = await asyncio.to_thread(handle.score, "truth", "sentiment")
    assert score["scored"] == 3
    assert score["accuracy"] == pytest.approx(sum(s == "positive" for s in out["sentiment"]) / 3, abs=1e-3)
    assert set(score["models"]) == {"sim/echo", "sim/backup"}
    assert score["kappa_kind"] == "cohen"
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT gold FROM batch"))).scalar() == "truth"


async def test_long_split_summarises_a_row_too_long_for_the_chain_in_parts_from_python(
    front: None, simulator: Simulator
) -> None:
    long_text = "\n\n".join(
        " ".join(f"Point {p}.{s} of the report is stated in a few plain words." for s in range(6))
        for p in range(8)
    )
    table = [{"id": 1, "text": long_text}, {"id": 2, "text": "review 2"}]
    run = functools.partial(orbatch.run, table, **call(models="sim/small", max_tokens=100, long="split"))
    answered = await asyncio.to_thread(run)
    assert [row["error"] for row in answered] == [None, None]
    assert answered[0]["answer"].startswith("echo: ")
    # One row, one answer, from several calls: its chunks', a combine's and the final one's.
    assert len(await simulator.calls()) > 3
    with pytest.raises(orbatch.BadInput, match="long= must be 'split'"):
        await asyncio.to_thread(functools.partial(orbatch.run, table, **call(long="cut")))
