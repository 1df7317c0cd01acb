"""A vote through the HTTP API: `extra_body={"vote": [...]}` on a create sends every request to each model; the
output file has a line per call, each naming its model; a bad vote is a 400 naming `vote`."""

from __future__ import annotations

import openai
import orjson
import pytest

from jobs.api.keys import NewKey
from tests.jobs.api.conftest import ApiServer, batch_lines, jsonl, wait_for


def test_a_vote_created_through_the_sdk_answers_every_request_once_per_model(
    api_server: ApiServer, owners: dict[str, NewKey]
) -> None:
    client = api_server.client(owners["alice"].key)
    uploaded = client.files.create(file=("in.jsonl", jsonl(batch_lines(4, "v"))), purpose="batch")
    created = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_body={"vote": ["sim/echo", "sim/backup"]},
    )
    done = wait_for(client, created.id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert done.request_counts.total == 8
    assert done.model is None
    assert done.output_file_id is not None
    lines = [orjson.loads(x) for x in client.files.content(done.output_file_id).content.splitlines()]
    by_id: dict[str, set[str]] = {}
    for line in lines:
        by_id.setdefault(line["custom_id"], set()).add(line["response"]["body"]["model"])
    assert by_id == {f"v{i}": {"sim/echo", "sim/backup"} for i in range(4)}


def test_a_vote_of_one_model_is_a_400_naming_vote(api_server: ApiServer, owners: dict[str, NewKey]) -> None:
    client = api_server.client(owners["alice"].key)
    uploaded = client.files.create(file=("in.jsonl", jsonl(batch_lines(1))), purpose="batch")
    with pytest.raises(openai.BadRequestError) as refused:
        client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            extra_body={"vote": ["sim/echo"]},
        )
    assert refused.value.param == "vote"  # type: ignore[attr-defined]
    assert "at least two different models" in refused.value.message
