"""`orbatch serve` driven by the official openai SDK, sync and async, as a team's existing batch code runs."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import openai
import orjson
import pytest
from openai import AsyncOpenAI
from openai.pagination import AsyncCursorPage
from openai.types import Batch, FileDeleted, FileObject
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.api.keys import NewKey
from tests.jobs.api.conftest import TERMINAL, ApiServer, batch_lines, jsonl, wait_for
from tests.support import TEST_API_KEY, Simulator, run_cli

MODELS = ["sim/echo"]


def test_the_sync_client_uploads_creates_polls_and_downloads_each_answer_under_its_own_id(
    api_server: ApiServer, owners: dict[str, NewKey], simulator: Simulator
) -> None:
    asyncio.run(simulator.configure(rules=[{"match": "prompt of q7", "kind": "status", "status": 400}]))
    client = api_server.client(owners["alice"].key)
    uploaded = client.files.create(file=("requests.jsonl", jsonl(batch_lines(20))), purpose="batch")
    assert (uploaded.object, uploaded.purpose, uploaded.filename) == ("file", "batch", "requests.jsonl")
    assert uploaded.bytes == len(jsonl(batch_lines(20)))

    created = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"team": "labelling"},
        extra_body={"models": MODELS, "max_attempts": 2},
    )
    assert created.status == "in_progress"
    assert created.input_file_id == uploaded.id
    assert created.request_counts is not None
    assert created.request_counts.total == 20
    assert created.expires_at == created.created_at + 24 * 3600
    assert created.metadata == {"team": "labelling"}

    done = wait_for(client, created.id)
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (19, 1)
    assert done.in_progress_at is not None
    assert done.completed_at is not None
    assert done.usage is not None
    assert done.usage.input_tokens > 0
    assert done.usage.output_tokens > 0
    extras = done.model_extra["orbatch"]  # type: ignore[index]
    assert extras["models"] == MODELS
    assert float(extras["cost_usd"]) > 0

    assert done.output_file_id is not None
    assert done.error_file_id is not None
    output = [orjson.loads(line) for line in client.files.content(done.output_file_id).content.splitlines()]
    assert len(output) == 19
    for line in output:
        reply = line["response"]["body"]["choices"][0]["message"]["content"]
        assert reply == f"echo: prompt of {line['custom_id']}"
    errors = [orjson.loads(line) for line in client.files.content(done.error_file_id).content.splitlines()]
    assert [e["custom_id"] for e in errors] == ["q7"]
    assert errors[0]["response"]["status_code"] == 400
    # The output file's size is what its download gives.
    assert client.files.retrieve(done.output_file_id).bytes == len(
        client.files.content(done.output_file_id).content
    )


async def test_the_async_client_lists_batches_and_files_a_page_at_a_time(
    api_server: ApiServer, owners: dict[str, NewKey]
) -> None:
    async with AsyncOpenAI(base_url=api_server.base_url, api_key=owners["bob"].key, max_retries=0) as client:
        uploaded = await client.files.create(file=("in.jsonl", jsonl(batch_lines(3))), purpose="batch")
        made = [
            await client.batches.create(
                input_file_id=uploaded.id,
                endpoint="/v1/chat/completions",
                completion_window="7d",
                extra_body={"models": MODELS},
            )
            for _ in range(3)
        ]
        # The same file twice is two batches, as with OpenAI.
        assert len({b.id for b in made}) == 3
        assert made[0].expires_at == made[0].created_at + 7 * 86400

        first = await client.batches.list(limit=2)
        assert isinstance(first, AsyncCursorPage)
        assert [b.id for b in first.data] == [made[2].id, made[1].id]
        assert first.has_more
        listed = [b.id async for b in await client.batches.list(limit=2)]
        assert listed == [b.id for b in reversed(made)]

        for made_batch in made:
            for _ in range(300):
                batch = await client.batches.retrieve(made_batch.id)
                if batch.status in TERMINAL:
                    break
                await asyncio.sleep(0.1)
            assert batch.status == "completed"
        files = [f async for f in await client.files.list(limit=1)]
        assert files[-1].id == uploaded.id
        assert {f.purpose for f in files} == {"batch", "batch_output"}
        oldest_first = await client.files.list(order="asc", purpose="batch")
        assert [f.id for f in oldest_first.data] == [uploaded.id]

        deleted = await client.files.delete(uploaded.id)
        assert (deleted.id, deleted.deleted) == (uploaded.id, True)
        with pytest.raises(openai.NotFoundError):
            await client.files.retrieve(uploaded.id)
        # The batches made from it keep their results.
        assert (await client.batches.retrieve(made[0].id)).output_file_id is not None


def test_a_file_with_bad_lines_makes_a_failed_batch_with_the_lines_in_its_errors(
    api_server: ApiServer, owners: dict[str, NewKey]
) -> None:
    client = api_server.client(owners["alice"].key)
    lines = [*batch_lines(2), b"{not json", batch_lines(1)[0], b'{"custom_id": "x", "messages": 3}']
    uploaded = client.files.create(file=("bad.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_body={"models": MODELS},
    )
    assert batch.status == "failed"
    assert batch.failed_at is not None
    assert batch.output_file_id is None
    assert batch.errors is not None
    assert batch.errors.data is not None
    assert [(e.line, e.code) for e in batch.errors.data] == [
        (3, "invalid_json_line"),
        (4, "duplicate_custom_id"),
        (5, "invalid_request"),
    ]
    assert batch.errors.data[1].message == 'duplicate custom_id "q0" (first on line 1)'
    assert batch.request_counts is not None
    assert batch.request_counts.total == 0
    assert client.batches.retrieve(batch.id).status == "failed"


async def test_a_failed_validation_queues_nothing(
    api_server: ApiServer, owners: dict[str, NewKey], engine: AsyncEngine
) -> None:
    client = api_server.client(owners["alice"].key)
    uploaded = client.files.create(file=("bad.jsonl", b"{}\n[]\n"), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.status == "failed"
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM request"))).scalar_one() == 0


def test_cancel_keeps_what_was_answered_and_reports_the_rest_as_cancelled(
    api_server: ApiServer, owners: dict[str, NewKey], simulator: Simulator
) -> None:
    asyncio.run(simulator.configure(latency_ms=300))
    client = api_server.client(owners["alice"].key)
    uploaded = client.files.create(file=("in.jsonl", jsonl(batch_lines(200))), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_body={"models": MODELS},
    )
    wait_until_answered = wait_for(client, batch.id, until=("in_progress",))
    assert wait_until_answered.status == "in_progress"
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling"
    assert cancelling.cancelling_at is not None
    cancelled = wait_for(client, batch.id)
    assert cancelled.status == "cancelled"
    assert cancelled.cancelled_at is not None
    counts = cancelled.request_counts
    assert counts is not None
    assert counts.completed < 200
    answered = client.files.content(cancelled.output_file_id).content.splitlines() if counts.completed else []
    assert len(answered) == counts.completed
    assert cancelled.error_file_id is not None
    unanswered = [
        orjson.loads(line) for line in client.files.content(cancelled.error_file_id).content.splitlines()
    ]
    assert len(unanswered) == 200 - counts.completed
    assert {line["error"]["code"] for line in unanswered} == {"batch_cancelled"}
    # Cancelling again is harmless; cancelling a finished batch is a conflict, not retried by the SDK.
    assert client.batches.cancel(batch.id).status == "cancelled"


def test_cancelling_a_completed_batch_is_a_409_the_sdk_does_not_retry(
    api_server: ApiServer, owners: dict[str, NewKey]
) -> None:
    client = api_server.client(owners["alice"].key, max_retries=2)
    uploaded = client.files.create(file=("in.jsonl", jsonl(batch_lines(1))), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_body={"models": MODELS},
    )
    assert wait_for(client, batch.id).status == "completed"
    with pytest.raises(openai.ConflictError) as caught:
        client.batches.cancel(batch.id)
    assert caught.value.status_code == 409
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert caught.value.body == {
        "message": "Cannot cancel a batch with status 'completed'.",
        "type": "invalid_request_error",
        "param": "batch_id",
        "code": "batch_not_cancellable",
    }


def test_another_owners_ids_answer_404_and_a_revoked_or_wrong_key_401(
    api_server: ApiServer, owners: dict[str, NewKey]
) -> None:
    alice, bob = api_server.client(owners["alice"].key), api_server.client(owners["bob"].key)
    uploaded = alice.files.create(file=("in.jsonl", jsonl(batch_lines(1))), purpose="batch")
    batch = alice.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_body={"models": MODELS},
    )
    done = wait_for(alice, batch.id)
    assert done.output_file_id is not None
    for attempt in (
        lambda: bob.files.retrieve(uploaded.id),
        lambda: bob.files.content(uploaded.id),
        lambda: bob.files.content(done.output_file_id),
        lambda: bob.files.delete(uploaded.id),
        lambda: bob.batches.retrieve(batch.id),
        lambda: bob.batches.cancel(batch.id),
        lambda: bob.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        ),
    ):
        with pytest.raises(openai.NotFoundError):
            attempt()
    # The same answer as for an id that does not exist at all: ids leak nothing.
    with pytest.raises(openai.NotFoundError) as unknown:
        bob.batches.retrieve("batch_0000000000000000")
    with pytest.raises(openai.NotFoundError) as foreign:
        bob.batches.retrieve(batch.id)
    assert foreign.value.body == {**unknown.value.body, "message": f"No batch found with id '{batch.id}'."}  # type: ignore[dict-item]
    assert bob.batches.list().data == []
    assert bob.files.list().data == []
    assert alice.files.retrieve(uploaded.id).id == uploaded.id

    with pytest.raises(openai.AuthenticationError) as wrong:
        api_server.client("obk_not-a-key-at-all-0123456789").batches.list()
    assert wrong.value.code == "invalid_api_key"
    assert wrong.value.response.json()["error"]["type"] == "invalid_request_error"


def test_no_key_at_all_is_a_401_in_openai_shape(api_server: ApiServer, owners: dict[str, NewKey]) -> None:
    response = httpx.get(f"{api_server.base_url}/batches")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="orbatch"'
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"].startswith("You didn't provide an API key.")


def test_every_object_the_server_returns_parses_with_the_sdks_own_types(
    api_server: ApiServer, owners: dict[str, NewKey]
) -> None:
    """Strict validation against openai.types: a missing required field or a wrong type would fail here.

    No answer carries the OpenRouter key the server calls with.
    """
    headers = {"Authorization": f"Bearer {owners['alice'].key}"}
    answers: list[bytes] = []
    hooks = {"response": [lambda response: answers.append(response.read())]}
    with httpx.Client(base_url=api_server.base_url, headers=headers, event_hooks=hooks) as http:
        uploaded = http.post(
            "/files", files={"file": ("a.jsonl", jsonl(batch_lines(2)))}, data={"purpose": "batch"}
        )
        FileObject.model_validate(uploaded.json(), strict=True)
        file_id = uploaded.json()["id"]
        FileObject.model_validate(http.get(f"/files/{file_id}").json(), strict=True)
        for page in http.get("/files").json()["data"]:
            FileObject.model_validate(page, strict=True)
        body = {
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "models": MODELS,
        }
        created = http.post("/batches", json=body).json()
        Batch.model_validate(created, strict=True)
        failed = http.post(
            "/batches",
            json={
                **body,
                "input_file_id": http.post(
                    "/files", files={"file": ("b.jsonl", b"nope\n")}, data={"purpose": "batch"}
                ).json()["id"],
            },
        ).json()
        assert Batch.model_validate(failed, strict=True).errors is not None
        seen = set()
        for _ in range(300):
            batch = http.get(f"/batches/{created['id']}").json()
            Batch.model_validate(batch, strict=True)
            seen.add(batch["status"])
            if batch["status"] == "completed":
                break
            time.sleep(0.1)
        for listed in http.get("/batches").json()["data"]:
            Batch.model_validate(listed, strict=True)
        cancelled = http.post(f"/batches/{created['id']}/cancel")
        assert cancelled.status_code == 409
        FileObject.model_validate(http.get(f"/files/{batch['output_file_id']}").json(), strict=True)
        FileDeleted.model_validate(http.delete(f"/files/{file_id}").json(), strict=True)
        answers.append(http.get(f"/files/{batch['output_file_id']}/content").content)
    assert "completed" in seen
    assert len(answers) > 10
    assert not [a for a in answers if TEST_API_KEY.encode() in a]


async def test_a_dry_run_answers_what_the_batch_would_cost_and_makes_no_batch(
    api_server: ApiServer, owners: dict[str, NewKey], engine: AsyncEngine, env: dict[str, str], tmp_path: Path
) -> None:
    client = api_server.client(owners["alice"].key)
    lines = jsonl(batch_lines(4, max_tokens=40))
    uploaded = client.files.create(file=("requests.jsonl", lines), purpose="batch")
    raw = client.batches.with_raw_response.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_body={"models": ["openai/gpt-4o-mini"], "dry_run": True},
    )
    estimate = orjson.loads(raw.content)
    assert estimate["object"] == "batch.estimate"
    assert (estimate["requests"], estimate["completion_tokens"]) == (4, 160)
    [model] = estimate["models"]
    assert (model["model"], model["tokenizer"]) == ("openai/gpt-4o-mini", "o200k_base")
    assert model["batch"]["price_id"] == "openai/gpt-4o-mini:batch"
    # The API's dry run and the command line's estimate of the same file are one estimate.
    path = tmp_path / "requests.jsonl"
    path.write_bytes(lines)
    cli = run_cli(env, "estimate", str(path), "--models", "openai/gpt-4o-mini", "--json")
    assert cli.returncode == 0, cli.stderr
    assert orjson.loads(cli.stdout) == estimate
    assert client.batches.list().data == []
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM batch"))).scalar_one() == 0
    # A batch made from the same file carries the estimate it was made with.
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_body={"models": ["openai/gpt-4o-mini"]},
    )
    kept = client.get(f"/batches/{batch.id}", cast_to=httpx.Response).json()["orbatch"]["estimate"]
    assert kept == estimate


def test_a_dry_run_of_a_file_with_bad_lines_is_a_400_naming_them(
    api_server: ApiServer, owners: dict[str, NewKey]
) -> None:
    client = api_server.client(owners["alice"].key)
    uploaded = client.files.create(
        file=("bad.jsonl", jsonl([*batch_lines(1), b"{not json"])), purpose="batch"
    )
    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            extra_body={"models": MODELS, "dry_run": True},
        )
    message = caught.value.body["message"]  # type: ignore[index]
    assert "1 bad line, nothing estimated: LINE 2: not valid JSON" in message
    assert "--skip-invalid" not in message
    assert caught.value.param == "input_file_id"  # type: ignore[attr-defined]
    assert client.batches.list().data == []


def test_the_openapi_document_and_the_docs_are_served(api_server: ApiServer) -> None:
    document = httpx.get(f"{api_server.url}/openapi.json").json()
    assert {"/v1/files", "/v1/files/{file_id}", "/v1/files/{file_id}/content", "/v1/batches"} <= set(
        document["paths"]
    )
    assert "/v1/batches/{batch_id}/cancel" in document["paths"]
    assert "BatchObject" in document["components"]["schemas"]
    assert "BatchEstimate" in document["components"]["schemas"]
    assert "dry_run" in document["components"]["schemas"]["BatchCreate"]["properties"]
    docs = httpx.get(f"{api_server.url}/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


def test_the_api_and_the_cli_refuse_an_unknown_model_in_the_same_words_through_the_one_intake(
    api_server: ApiServer, owners: dict[str, NewKey], env: dict[str, str], tmp_path: Path
) -> None:
    problem = "unknown model 'sim/typo': OpenRouter's model lists (GET /models, GET /embeddings/models) have no such id"
    lines = jsonl(batch_lines(2))
    client = api_server.client(owners["alice"].key)
    uploaded = client.files.create(file=("requests.jsonl", lines), purpose="batch")
    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            extra_body={"models": ["sim/echo", "sim/typo"]},
        )
    assert caught.value.param == "models"  # type: ignore[attr-defined]
    assert caught.value.body["message"] == problem  # type: ignore[index]
    path = tmp_path / "requests.jsonl"
    path.write_bytes(lines)
    refused = run_cli(env, "submit", str(path), "--models", "sim/echo,sim/typo")
    assert refused.returncode == 2
    assert f"--models: {problem}" in refused.stderr
    assert refused.stdout == ""
    assert client.batches.list().data == []


def test_an_openai_batch_file_naming_openais_models_and_an_embeddings_file_run_unchanged(
    api_server: ApiServer, owners: dict[str, NewKey], simulator: Simulator
) -> None:
    client = api_server.client(owners["alice"].key)
    chat = client.files.create(
        file=("chat.jsonl", jsonl(batch_lines(3, model="gpt-4o-mini"))), purpose="batch"
    )
    created = client.batches.create(
        input_file_id=chat.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_for(client, created.id)
    assert done.request_counts is not None
    assert (done.status, done.request_counts.completed) == ("completed", 3)
    assert done.output_file_id is not None
    output = [orjson.loads(line) for line in client.files.content(done.output_file_id).content.splitlines()]
    assert {line["response"]["body"]["model"] for line in output} == {"openai/gpt-4o-mini"}

    vectors = [
        orjson.dumps(
            {
                "custom_id": f"v{i}",
                "method": "POST",
                "url": "/v1/embeddings",
                "body": {"model": "text-embedding-3-small", "input": [f"doc {i}", f"title {i}"]},
            }
        )
        for i in range(4)
    ]
    uploaded = client.files.create(file=("vectors.jsonl", jsonl(vectors)), purpose="batch")
    created = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    assert created.endpoint == "/v1/embeddings"
    done = wait_for(client, created.id)
    assert done.request_counts is not None
    assert (done.status, done.request_counts.completed) == ("completed", 4)
    assert done.output_file_id is not None
    output = [orjson.loads(line) for line in client.files.content(done.output_file_id).content.splitlines()]
    assert sorted(line["custom_id"] for line in output) == ["v0", "v1", "v2", "v3"]
    for line in output:
        body = line["response"]["body"]
        assert (body["object"], body["model"]) == ("list", "openai/text-embedding-3-small")
        assert [(d["index"], len(d["embedding"])) for d in body["data"]] == [(0, 1536), (1, 1536)]
    # A chat file given as an embeddings batch fails its validation, saying which line and why.
    wrong = client.batches.create(input_file_id=chat.id, endpoint="/v1/embeddings", completion_window="24h")
    assert wrong.status == "failed"
    assert wrong.errors is not None
    assert wrong.errors.data is not None
    said = str(wrong.errors.data[0].message)
    assert "a /v1/chat/completions request in a batch of /v1/embeddings requests" in said
    assert "create the batch with endpoint '/v1/chat/completions' for a file of such requests" in said
