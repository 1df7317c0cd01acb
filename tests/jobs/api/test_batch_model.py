"""The batch object's `model`, as OpenAI's SDK reads it: the model every request of the batch is sent to first
(a line's own `model`, or the first of its `models`, else the first of the batch's chain), when that is one
model; None when the requests start with different ones. Create, retrieve, list and cancel all say it."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest
from openai import OpenAI
from openai.types import Batch

from jobs.api.keys import NewKey
from tests.jobs.api.conftest import ApiServer, batch_lines, jsonl
from tests.support import Simulator


def _line(custom_id: str, **chain: Any) -> bytes:
    body = {"messages": [{"role": "user", "content": f"prompt of {custom_id}"}], **chain}
    return orjson.dumps(
        {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    )


CASES = {
    "lines naming none take the batch's chain": (
        [_line("a"), _line("b")],
        ["sim/echo", "sim/backup"],
        "sim/echo",
    ),
    "every line names the same model, the batch none": (
        [_line("a", model="sim/backup"), _line("b", model="sim/backup")],
        None,
        "sim/backup",
    ),
    "lines' chains that start with the same model": (
        [_line("a", models=["sim/spare", "sim/echo"]), _line("b", model="sim/spare")],
        None,
        "sim/spare",
    ),
    "a line naming the batch's first model, another naming none": (
        [_line("a", model="sim/echo"), _line("b")],
        ["sim/echo"],
        "sim/echo",
    ),
    "lines naming two models": (
        [_line("a", model="sim/echo"), _line("b", model="sim/backup")],
        None,
        None,
    ),
    "one line leaving the batch's chain for another model": (
        [_line("a"), _line("b", model="sim/backup")],
        ["sim/echo"],
        None,
    ),
    "a file refused for a bad line: the batch's chain": (
        [_line("a", model="sim/backup"), b"{not json"],
        ["sim/spare"],
        "sim/spare",
    ),
}


def _create(client: OpenAI, lines: list[bytes], models: list[str] | None) -> Batch:
    upload = client.files.create(file=("in.jsonl", jsonl(lines)), purpose="batch")
    return client.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_body={} if models is None else {"models": models},
    )


@pytest.mark.parametrize(("lines", "models", "model"), CASES.values(), ids=CASES.keys())
def test_the_batch_model_is_the_one_model_every_request_is_sent_to_first(
    api_server: ApiServer,
    owners: dict[str, NewKey],
    simulator: Simulator,
    lines: list[bytes],
    models: list[str] | None,
    model: str | None,
) -> None:
    client = api_server.client(owners["alice"].key)
    created = _create(client, lines, models)
    assert created.model == model
    assert client.batches.retrieve(created.id).model == model
    assert [b.model for b in client.batches.list().data] == [model]


def test_cancel_answers_the_model_too_and_the_openapi_document_shows_it(
    api_server: ApiServer, owners: dict[str, NewKey], simulator: Simulator
) -> None:
    # Slow answers keep the batch running until it is cancelled.
    asyncio.run(simulator.configure(latency_ms=500))
    client = api_server.client(owners["alice"].key)
    created = _create(client, batch_lines(100), ["sim/backup", "sim/echo"])
    cancelled = client.batches.cancel(created.id)
    assert cancelled.status in ("cancelling", "cancelled")
    assert cancelled.model == "sim/backup"
    document = httpx.get(f"{api_server.url}/openapi.json").json()
    field = document["components"]["schemas"]["BatchObject"]["properties"]["model"]
    assert "sent to first" in field["description"]
