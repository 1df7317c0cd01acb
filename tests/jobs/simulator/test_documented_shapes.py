"""The simulator's objects have the shapes the docs show: every fenced JSON example of batch-api.md and
embeddings.md (copied under tests/data/openrouter) is matched, key by key and type by type, by what the
simulator answers; embeddings bodies are checked against the OpenAPI spec too."""

from __future__ import annotations

import re
from typing import Any

import orjson

from tests.jobs.simulator.client import (
    api,
    batch_body,
    chat_requests,
    create_batch,
    spec_errors,
    wait_for_batch,
)
from tests.support import ROOT, Simulator

DOCS = ROOT / "tests" / "data" / "openrouter"
REQUEST = "/paths/~1embeddings/post/requestBody/content/application~1json/schema"
RESPONSE = "/paths/~1embeddings/post/responses/200/content/application~1json/schema"


def examples(name: str) -> list[Any]:
    """The fenced ```json blocks of a doc, parsed, in order."""
    text = (DOCS / name).read_text()
    return [orjson.loads(block) for block in re.findall(r"```json\n(.*?)```", text, re.DOTALL)]


def shape_errors(documented: Any, ours: Any, where: str = "$") -> list[str]:
    """Where `ours` lacks a key `documented` has, or holds another type (a documented null stands for any
    type; lists are compared by their first items)."""
    if documented is None:
        return []
    if isinstance(documented, dict):
        if not isinstance(ours, dict):
            return [f"{where}: an object in the docs, {type(ours).__name__} here"]
        errors = [f"{where}.{key}: missing" for key in documented if key not in ours]
        for key, value in documented.items():
            if key in ours:
                errors += shape_errors(value, ours[key], f"{where}.{key}")
        return errors
    if isinstance(documented, list):
        if not isinstance(ours, list):
            return [f"{where}: an array in the docs, {type(ours).__name__} here"]
        return shape_errors(documented[0], ours[0], f"{where}[0]") if documented and ours else []
    if isinstance(documented, bool) or isinstance(ours, bool):
        same = isinstance(documented, bool) and isinstance(ours, bool)
    elif isinstance(documented, int):
        same = isinstance(ours, int)
    elif isinstance(documented, float):
        same = isinstance(ours, int | float)
    else:
        same = isinstance(ours, type(documented))
    return [] if same else [f"{where}: {type(documented).__name__} in the docs, {type(ours).__name__} here"]


def test_the_docs_hold_the_examples_this_test_reads() -> None:
    # A doc edited so that an example is lost would otherwise leave less to check, silently.
    batch_object, result_line = examples("batch-api.md")
    assert (batch_object["object"], batch_object["status"]) == ("batch", "validating")
    assert result_line["custom_id"] == "req-0001"
    request, response, batch, line = examples("embeddings.md")
    assert request["model"] == response["model"] == batch["model"] == "openai/text-embedding-3-small"
    assert batch["endpoint"] == "/v1/embeddings"
    assert line["custom_id"] == "emb-0001"
    assert shape_errors({"a": 1, "b": [{"c": "x"}]}, {"a": 2, "b": [{"c": 3}]}) == [
        "$.b[0].c: str in the docs, int here"
    ]


async def test_a_batch_object_and_a_chat_result_line_have_the_documented_shapes(simulator: Simulator) -> None:
    batch_object, result_line = examples("batch-api.md")
    created = await create_batch(simulator, batch_body(chat_requests("hello"), completion_window="24h"))
    assert shape_errors(batch_object, created) == []
    # Current objects add these (batch-api.md §2).
    assert {"provider", "expires_at"} <= created.keys()
    done = await wait_for_batch(simulator, created["id"])
    assert shape_errors({**batch_object, "results": [result_line]}, done) == []
    line = done["results"][0]
    assert shape_errors(result_line, line) == []
    assert line["response"]["body"]["id"].startswith("gen-batch-")
    assert line["response"]["body"]["object"] == result_line["response"]["body"]["object"]
    usage = done["usage"]
    assert (
        shape_errors(
            {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "cost": 0.0, "is_byok": False},
            usage,
        )
        == []
    )
    listed = (await api(simulator, "GET", "batches")).json()
    assert (
        shape_errors(
            {"object": "list", "data": [batch_object], "first_id": "", "last_id": "", "has_more": False},
            listed,
        )
        == []
    )
    page = (await api(simulator, "GET", f"batches/{created['id']}/results")).json()
    assert shape_errors({"object": "list", "data": [result_line], "has_more": False}, page) == []
    assert "next_cursor" in page


async def test_the_documented_embeddings_request_is_answered_in_the_documented_shape(
    simulator: Simulator,
) -> None:
    request, response, _, _ = examples("embeddings.md")
    assert spec_errors(REQUEST, request) == []
    answer = (await api(simulator, "POST", "embeddings", json=request)).json()
    assert spec_errors(RESPONSE, answer) == []
    assert shape_errors(response, answer) == []
    assert len(answer["data"]) == len(request["input"])


async def test_the_documented_embeddings_batch_runs_and_its_lines_have_the_documented_shape(
    simulator: Simulator,
) -> None:
    _, _, batch, line = examples("embeddings.md")
    # The docs' model has no batch variant in the catalogue; the tests' own has.
    body = {**batch, "model": "sim/embed:batch"}
    assert list(body) == ["endpoint", "model", "requests"]
    created = await create_batch(simulator, body)
    done = await wait_for_batch(simulator, created["id"])
    assert done["status"] == "completed"
    lines = {r["custom_id"]: r for r in done["results"]}
    assert shape_errors(line, lines["emb-0001"]) == []
    # An array input gives one item per string, ordered by index; a single string exactly one.
    assert [d["index"] for d in lines["emb-0001"]["response"]["body"]["data"]] == [0, 1]
    assert [d["index"] for d in lines["emb-0002"]["response"]["body"]["data"]] == [0]
    for result in lines.values():
        assert spec_errors(RESPONSE, result["response"]["body"]) == []
