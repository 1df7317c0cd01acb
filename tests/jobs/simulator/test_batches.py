"""The simulator's Batch API, item by item of batch-api.md §16: what a faithful simulator must do."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from aiohttp import web

from tests.jobs.simulator.client import (
    AUTH,
    api,
    batch_body,
    chat,
    chat_requests,
    create_batch,
    post_chat,
    wait_for_batch,
)
from tests.support import Simulator, until

ROUTES = (
    ("POST", "batches"),
    ("GET", "batches"),
    ("GET", "batches/batch_x"),
    ("GET", "batches/batch_x/results"),
    ("POST", "batches/batch_x/cancel"),
    ("DELETE", "batches/batch_x"),
)


async def finished(simulator: Simulator, body: dict[str, Any]) -> dict[str, Any]:
    """Create a batch and wait for it to end; its last GET."""
    batch = await create_batch(simulator, body)
    return await wait_for_batch(simulator, str(batch["id"]))


# --- paths, auth, the switch off --------------------------------------------------------------------------


async def test_the_v1_paths_and_the_beta_alias_create_and_get_the_same_batches(simulator: Simulator) -> None:
    async with httpx.AsyncClient(headers=AUTH) as client:
        beta = f"{simulator.root}/api/beta/batches"
        created = await client.post(beta, json=batch_body(chat_requests("hi")))
        assert created.status_code == 202
        batch_id = created.json()["id"]
        assert batch_id.startswith("batch_")
        assert (await client.get(f"{beta}/{batch_id}")).json()["id"] == batch_id
    done = await wait_for_batch(simulator, batch_id)
    assert done["status"] == "completed"
    listed = (await api(simulator, "GET", "batches")).json()
    assert [b["id"] for b in listed["data"]] == [batch_id]


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_every_batch_route_needs_a_bearer_key(simulator: Simulator, method: str, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic abc"}):
        refused = await api(simulator, method, path, headers=headers, json={})
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == 401
    await simulator.configure(valid_keys=["sk-or-v1-other"])
    assert (await api(simulator, method, path, json={})).status_code == 401


async def test_a_key_without_the_batch_api_gets_404_on_every_batch_route(simulator: Simulator) -> None:
    batch = await finished(simulator, batch_body(chat_requests("before")))
    await simulator.configure(batches_enabled=False)
    for method, path in ROUTES:
        refused = await api(simulator, method, path.replace("batch_x", str(batch["id"])), json={})
        assert refused.status_code == 404, (method, path)
        assert "not enabled" in refused.json()["error"]["message"]
    async with httpx.AsyncClient(headers=AUTH) as client:
        beta = await client.post(f"{simulator.root}/api/beta/batches", json=batch_body(chat_requests("x")))
    assert beta.status_code == 404
    # Chat is not the Batch API's business.
    assert (await post_chat(simulator, chat("still here"))).status_code == 200
    await simulator.configure(batches_enabled=True)
    assert (await api(simulator, "GET", f"batches/{batch['id']}")).status_code == 200


# --- the stream-parsed body -------------------------------------------------------------------------------

LINES = b'[{"custom_id":"a","body":{"messages":[{"role":"user","content":"hi"}]}}]'


@pytest.mark.parametrize(
    "raw",
    [
        b'{"requests":' + LINES + b',"endpoint":"/v1/chat/completions","model":"sim/echo:batch"}',
        b'{"endpoint":"/v1/chat/completions","requests":' + LINES + b',"model":"sim/echo:batch"}',
        b'{"model":"sim/echo:batch","requests":' + LINES + b',"endpoint":"/v1/chat/completions"}',
        b'{"endpoint":"/v1/chat/completions","model":"sim/echo:batch","requests":'
        + LINES
        + b',"callback_url":"https://example.com/hook"}',
        # Missing endpoint or model is the same 400.
        b'{"model":"sim/echo:batch","requests":' + LINES + b"}",
        b'{"endpoint":"/v1/chat/completions","requests":' + LINES + b"}",
        # A "model" inside a string or a nested object before `requests` is not the top-level key.
        b'{"endpoint":"/v1/chat/completions","callback_url":"https://example.com/\\"model\\":",'
        b'"requests":' + LINES + b',"model":"sim/echo:batch"}',
    ],
    ids=[
        "requests-first",
        "model-after",
        "endpoint-after",
        "callback-after",
        "no-endpoint",
        "no-model",
        "model-in-a-string",
    ],
)
async def test_requests_before_endpoint_model_or_callback_url_is_a_400(
    simulator: Simulator, raw: bytes
) -> None:
    refused = await api(simulator, "POST", "batches", content=raw)
    assert refused.status_code == 400, refused.text
    assert "before" in refused.json()["error"]["message"]
    assert await simulator.batches() == []


async def test_the_order_is_read_from_the_bytes_with_any_spacing(simulator: Simulator) -> None:
    raw = (
        b' {\n "endpoint" : "/v1/chat/completions",\t"model"\n:\n"sim/echo:batch", '
        b'"callback_url": "https://example.com/h",  "requests" :' + LINES + b" }\n"
    )
    assert (await api(simulator, "POST", "batches", content=raw)).status_code == 202


# --- checks at create -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"endpoint": "/v1/completions"}, "endpoint must be one of"),
        ({"completion_window": "48h"}, "completion_window"),
        ({"requests": []}, "non-empty"),
        ({"requests": chat_requests("a", "b", prefix="same")[:1] * 2}, "used twice"),
        (
            {"requests": [{"custom_id": "a", "body": {"model": "sim/backup:batch", "messages": []}}]},
            "must be the batch's",
        ),
        ({"provider": {"only": ["x"], "order": ["x"]}}, "provider may hold only"),
        ({"provider": {"allow_fallbacks": "yes"}}, "allow_fallbacks"),
        ({"metadata": {"team": "a"}}, "unknown fields"),
        ({"requests": [{"custom_id": "a", "method": "POST", "body": {}}]}, "unknown fields"),
        ({"requests": [{"custom_id": "", "body": {}}]}, "custom_id"),
        ({"callback_url": "http://example.com/hook"}, "https"),
    ],
    ids=[
        "endpoint",
        "window",
        "empty",
        "duplicate-id",
        "line-model",
        "provider-keys",
        "provider-type",
        "metadata",
        "line-keys",
        "empty-id",
        "callback-http",
    ],
)
async def test_a_malformed_batch_is_a_400_and_stores_nothing(
    simulator: Simulator, change: dict[str, Any], words: str
) -> None:
    body: dict[str, Any] = batch_body(chat_requests("hello"))
    requests = body.pop("requests")
    body.update({k: v for k, v in change.items() if k != "requests"})
    body["requests"] = change.get("requests", requests)
    refused = await api(simulator, "POST", "batches", json=body)
    assert refused.status_code == 400, refused.text
    assert words in refused.json()["error"]["message"]
    assert await simulator.batches() == []


async def test_what_the_docs_allow_is_accepted(simulator: Simulator) -> None:
    lines = chat_requests("a", "b")
    lines[0]["body"]["model"] = "sim/echo:batch"  # a line's model may be given if it is the batch's
    body = batch_body(
        lines,
        completion_window="24h",
        provider={"only": ["google-vertex"], "allow_fallbacks": False},
        callback_url="https://example.com/hook",
    )
    batch = await create_batch(simulator, body)
    done = await wait_for_batch(simulator, batch["id"])
    assert (done["status"], done["provider"]) == ("completed", "google-vertex")


async def test_at_most_5000_lines(simulator: Simulator) -> None:
    lines = [
        {"custom_id": str(i), "body": {"messages": [{"role": "user", "content": "x"}]}} for i in range(5001)
    ]
    refused = await api(simulator, "POST", "batches", json=batch_body(lines))
    assert refused.status_code == 400
    assert "at most 5000" in refused.json()["error"]["message"]
    assert (await api(simulator, "POST", "batches", json=batch_body(lines[:5000]))).status_code == 202


async def test_a_body_over_200_mb_is_a_413_before_it_is_read(simulator: Simulator) -> None:
    # The default limit, without sending 200 MB: the length is enough to refuse.
    address = urlsplit(simulator.base_url)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    try:
        writer.write(
            b"POST /api/v1/batches HTTP/1.1\r\nHost: sim\r\n"
            + f"Authorization: {AUTH['Authorization']}\r\n".encode()
            + b"Content-Type: application/json\r\nContent-Length: 200000001\r\n\r\n{"
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 30)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert status_line.split()[1] == b"413"
    # A body that turns out too long while it streams in (no Content-Length) is refused the same way.
    await simulator.configure(batch_max_bytes=10_000)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"endpoint":"/v1/chat/completions","model":"sim/echo:batch","requests":['
        for i in range(200):
            yield orjson.dumps(chat_requests(f"line {i}")[0]) + b","
        yield b"{}]}"

    streamed = await api(simulator, "POST", "batches", content=chunks())
    assert streamed.status_code == 413
    assert streamed.json()["error"] == {"code": 413, "message": "Request payload too large"}


async def test_a_base_slug_is_a_400_under_the_variant_policy_and_priced_as_its_variant_under_either(
    simulator: Simulator,
) -> None:
    refused = await api(simulator, "POST", "batches", json=batch_body(chat_requests("x"), model="sim/echo"))
    assert refused.status_code == 400
    assert "sim/echo:batch" in refused.json()["error"]["message"]
    await simulator.configure(batch_model_policy="either")
    done = await finished(simulator, batch_body(chat_requests("x"), model="sim/echo"))
    assert (done["status"], done["model"]) == ("completed", "sim/echo")
    assert (await simulator.batches())[0]["priced_as"] == "sim/echo:batch"
    async with httpx.AsyncClient() as client:
        bad = await client.post(f"{simulator.root}/_sim/config", json={"batch_model_policy": "any"})
    assert bad.status_code == 400


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (batch_body(chat_requests("x"), model="sim/spare:batch"), "has no batch variant"),
        (batch_body(chat_requests("x"), model="no/such-model:batch"), "has no batch variant"),
        (batch_body(chat_requests("x"), endpoint="/v1/embeddings"), "cannot serve /v1/embeddings"),
        (batch_body([{"custom_id": "a", "body": {"input": "x"}}], model="sim/embed:batch"), "cannot serve"),
        (batch_body(chat_requests("x"), endpoint="/v1/responses"), "not run by this simulator"),
        (
            batch_body(
                [
                    {"custom_id": "plain", "body": {"messages": [{"role": "user", "content": "a"}]}},
                    {
                        "custom_id": "json",
                        "body": {
                            "messages": [{"role": "user", "content": "b"}],
                            "response_format": {"type": "json_object"},
                        },
                    },
                ],
                model="google/gemini-3.7-flash:batch",
            ),
            "line 'json'",
        ),
        (
            batch_body(
                [
                    {
                        "custom_id": "pic",
                        "body": {
                            "messages": [
                                {
                                    "role": "user",
                                    "content": [
                                        {
                                            "type": "image_url",
                                            "image_url": {"url": "data:image/png;base64,AA"},
                                        }
                                    ],
                                }
                            ]
                        },
                    }
                ]
            ),
            "line 'pic'",
        ),
    ],
    ids=[
        "no-variant",
        "unknown",
        "chat-model-embeddings",
        "embeddings-model-chat",
        "responses",
        "google",
        "data-url",
    ],
)
async def test_a_202_means_stored_not_valid_the_batch_fails_after_with_a_message(
    simulator: Simulator, body: dict[str, Any], words: str
) -> None:
    done = await finished(simulator, body)
    assert done["status"] == "failed"
    assert words in done["error"]["message"]
    assert done["results"] == []
    assert done["request_counts"] == {"total": len(body["requests"]), "completed": 0, "failed": 0}
    assert (done["usage"], done["provider"]) == (None, None)
    assert done["finalized_at"] is not None


async def test_a_create_with_no_credits_is_a_402(simulator: Simulator) -> None:
    await simulator.configure(credits=0)
    refused = await api(simulator, "POST", "batches", json=batch_body(chat_requests("x")))
    assert refused.status_code == 402
    assert refused.json()["error"]["message"].startswith("Insufficient credits")


# --- its life ---------------------------------------------------------------------------------------------


async def test_a_batch_goes_from_validating_to_completed_through_each_status_on_time(
    simulator: Simulator,
) -> None:
    # Seconds divided by the speed: 4 s of validating, 8 of work and 4 of finalizing take 2 s at speed 8.
    await simulator.configure(
        speed=8, batch_validating_seconds=4, batch_in_progress_seconds=8, batch_finalizing_seconds=4
    )
    started = time.monotonic()
    batch = await create_batch(simulator, batch_body(chat_requests("a", "b", "c", "d")))
    assert batch["expires_at"] - batch["created_at"] == 86400 // 8
    assert (batch["results"], batch["usage"], batch["finalized_at"], batch["provider"]) == (
        None,
        None,
        None,
        None,
    )
    seen = ["validating"]
    counts = []
    while seen[-1] != "completed":
        now = (await api(simulator, "GET", f"batches/{batch['id']}")).json()
        if now["status"] != seen[-1]:
            seen.append(now["status"])
        counts.append(now["request_counts"]["completed"])
        assert now["results"] is None or now["status"] == "completed"
        await asyncio.sleep(0.02)
    assert seen == ["validating", "in_progress", "finalizing", "completed"]
    assert 1.9 < time.monotonic() - started < 20
    # Lines are answered one by one while it is in progress.
    assert sorted(counts) == counts
    assert any(0 < c < 4 for c in counts)


async def test_a_batch_set_to_expire_ends_expired_at_its_deadline_with_its_late_lines_failed(
    simulator: Simulator,
) -> None:
    await simulator.configure(batch_expire=True, batch_in_progress_seconds=1.0)
    batch = await create_batch(simulator, batch_body(chat_requests(*"abcdefgh")))
    done = await wait_for_batch(simulator, batch["id"])
    assert done["status"] == "expired"
    assert done["finalized_at"] == done["expires_at"]
    answered = [r for r in done["results"] if r["response"] is not None]
    late = [r for r in done["results"] if r["error"] is not None]
    assert len(answered) == 4
    assert len(late) == 4
    assert all(r["error"]["type"] == "batch_expired" and r["response"] is None for r in late)
    assert done["results"] == answered + late  # the answered first, then the late ones
    assert sorted(r["custom_id"] for r in done["results"]) == [f"req-{i}" for i in range(8)]
    assert done["request_counts"] == {"total": 8, "completed": 4, "failed": 4}
    assert done["usage"]["cost"] > 0  # what was answered is billed


async def test_a_batch_past_its_window_expires_too(simulator: Simulator) -> None:
    await simulator.configure(batch_window_seconds=0.5, batch_in_progress_seconds=60)
    done = await finished(simulator, batch_body(chat_requests("a", "b")))
    assert done["status"] == "expired"
    assert {r["error"]["type"] for r in done["results"]} == {"batch_expired"}


# --- results ----------------------------------------------------------------------------------------------


async def test_results_come_once_terminal_never_in_lists_and_page_by_cursor_stably(
    simulator: Simulator,
) -> None:
    texts = [f"question {i}" for i in range(7)]
    batch = await create_batch(simulator, batch_body(chat_requests(*texts)))
    early = await api(simulator, "GET", f"batches/{batch['id']}/results")
    assert early.status_code == 409
    assert "validating" in early.json()["error"]["message"]
    done = await wait_for_batch(simulator, batch["id"])
    inline = done["results"]
    assert len(inline) == 7
    # Lines finish in any order: results are matched by custom_id, not position.
    assert {r["custom_id"]: r["response"]["body"]["choices"][0]["message"]["content"] for r in inline} == {
        f"req-{i}": f"echo: {text}" for i, text in enumerate(texts)
    }
    listed = (await api(simulator, "GET", "batches")).json()["data"]
    assert [b["results"] for b in listed] == [None]
    pages, cursor = [], None
    while True:
        params = {"limit": 3} if cursor is None else {"limit": 3, "cursor": cursor}
        page = (await api(simulator, "GET", f"batches/{batch['id']}/results", params=params)).json()
        again = (await api(simulator, "GET", f"batches/{batch['id']}/results", params=params)).json()
        assert again == page  # the same page when asked again
        assert page["object"] == "list"
        pages.append(page["data"])
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [r for p in pages for r in p] == inline
    for params in ({"limit": 0}, {"limit": 1001}, {"cursor": "not-a-cursor"}):
        assert (
            await api(simulator, "GET", f"batches/{batch['id']}/results", params=params)
        ).status_code == 400
    view = (await simulator.batches())[0]
    assert view["results_pages_fetched"] == 6
    assert view["results_inline_fetched"] >= 1


async def test_each_line_has_exactly_one_of_response_or_error_and_failures_are_injectable(
    simulator: Simulator,
) -> None:
    await simulator.configure(
        rules=[
            {
                "custom_id": "req-1",
                "kind": "line_error",
                "code": "rate_limit_exceeded",
                "message": "slow down",
            },
            {"match": "overloaded", "kind": "status", "status": 529},
            {"match": "bad gateway", "kind": "not_json", "status": 502},
            {"match": "broken", "kind": "error_in_200", "message": "provider died"},
        ]
    )
    texts = ("fine", "also fine but id 1", "overloaded now", "bad gateway", "broken")
    done = await finished(simulator, batch_body(chat_requests(*texts)))
    assert done["status"] == "completed"  # a completed batch can hold failed lines
    lines = {r["custom_id"]: r for r in done["results"]}
    for line in lines.values():
        assert (line["response"] is None) != (line["error"] is None)
        assert line["id"].startswith("batch_req_")
    assert lines["req-1"]["error"] == {"type": "rate_limit_exceeded", "message": "slow down", "param": None}
    assert lines["req-2"]["response"]["status_code"] == 529
    assert lines["req-2"]["response"]["body"]["error"] == {"code": 529, "message": "Provider returned error"}
    assert lines["req-3"]["response"]["status_code"] == 502
    assert isinstance(lines["req-3"]["response"]["body"], str)  # not JSON: the line still decodes
    broken = lines["req-4"]["response"]
    assert broken["status_code"] == 200
    assert broken["body"]["choices"][0]["error"]["message"] == "provider died"
    ok = lines["req-0"]["response"]
    assert ok["body"]["id"].startswith("gen-batch-")
    assert ok["request_id"].startswith("request_")
    # 2xx lines are completed (the error inside a 200 too, as its status says); the rest failed.
    assert done["request_counts"] == {"total": 5, "completed": 2, "failed": 3}


async def test_lines_are_answered_as_live_calls_are_at_half_the_price(simulator: Simulator) -> None:
    schema = {
        "type": "json_schema",
        "json_schema": {
            "name": "label",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {"label": {"enum": ["yes", "no"]}},
                "required": ["label"],
            },
        },
    }
    await simulator.configure(rules=[{"match": "scripted", "kind": "reply", "content": "as scripted"}])
    text = "How many moons has Mars? " * 6
    requests = chat_requests(text, "scripted please", "Is this spam?")
    requests[2]["body"]["response_format"] = schema
    done = await finished(simulator, batch_body(requests))
    lines = {r["custom_id"]: r["response"]["body"] for r in done["results"]}
    live = [
        (await post_chat(simulator, chat(text))).json(),
        (await post_chat(simulator, chat("scripted please"))).json(),
        (await post_chat(simulator, chat("Is this spam?", response_format=schema))).json(),
    ]
    for number, answer in enumerate(live):
        line = lines[f"req-{number}"]
        assert line["choices"][0]["message"] == answer["choices"][0]["message"]
        assert line["usage"]["prompt_tokens"] == answer["usage"]["prompt_tokens"]
        assert line["usage"]["cost"] == pytest.approx(answer["usage"]["cost"] / 2, rel=1e-9)
    assert orjson.loads(lines["req-2"]["choices"][0]["message"]["content"])["label"] in ("yes", "no")
    # Priced with the :batch entry of the catalogue.
    pricing = {m["id"]: m["pricing"] for m in (await api(simulator, "GET", "models")).json()["data"]}[
        "sim/echo:batch"
    ]
    usage = lines["req-0"]["usage"]
    expected = (
        Decimal(pricing["prompt"]) * usage["prompt_tokens"]
        + Decimal(pricing["completion"]) * usage["completion_tokens"]
    )
    assert Decimal(str(usage["cost"])) == expected
    # The batch's usage is the lines' sum, not BYOK.
    total = done["usage"]
    assert total["is_byok"] is False
    assert total["cost"] == pytest.approx(sum(body["usage"]["cost"] for body in lines.values()), rel=1e-9)
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert total[key] == sum(body["usage"][key] for body in lines.values())


async def test_batch_lines_are_not_live_calls_and_the_test_view_counts_them(simulator: Simulator) -> None:
    await post_chat(simulator, chat("a live call"))
    done = await finished(simulator, batch_body(chat_requests("one", "two", "three")))
    calls = await simulator.calls()
    assert [c["body"]["messages"][0]["content"] for c in calls] == ["a live call"]
    assert (await simulator.stats())["calls"] == 1
    [view] = await simulator.batches()
    assert view["id"] == done["id"]
    assert view["status"] == "completed"
    assert [(line["custom_id"], line["answered"], line["status_code"]) for line in view["lines"]] == [
        ("req-0", True, 200),
        ("req-1", True, 200),
        ("req-2", True, 200),
    ]
    assert view["lines"][1]["body"]["messages"][0]["content"] == "two"
    assert view["gets"] >= 1
    await simulator.reset()
    assert await simulator.batches() == []
    assert (await api(simulator, "GET", f"batches/{done['id']}")).status_code == 404


async def test_post_sim_reset_clears_the_batches(simulator: Simulator) -> None:
    await create_batch(simulator, batch_body(chat_requests("x")))
    async with httpx.AsyncClient() as client:
        assert (await client.post(f"{simulator.root}/_sim/reset")).status_code == 200
    assert await simulator.batches() == []
    assert (await api(simulator, "GET", "batches")).json()["data"] == []


# --- list -------------------------------------------------------------------------------------------------


async def test_the_list_is_newest_first_in_pages_filtered_by_status_and_time(simulator: Simulator) -> None:
    await simulator.configure(batch_in_progress_seconds=60)
    ids = [(await create_batch(simulator, batch_body(chat_requests(f"b{i}"))))["id"] for i in range(5)]
    newest_first = ids[::-1]
    first = (await api(simulator, "GET", "batches", params={"limit": 2})).json()
    assert first["object"] == "list"
    assert [b["id"] for b in first["data"]] == newest_first[:2]
    assert (first["first_id"], first["last_id"], first["has_more"]) == (
        newest_first[0],
        newest_first[1],
        True,
    )
    second = (await api(simulator, "GET", "batches", params={"limit": 2, "after": first["last_id"]})).json()
    assert [b["id"] for b in second["data"]] == newest_first[2:4]
    third = (await api(simulator, "GET", "batches", params={"limit": 2, "after": second["last_id"]})).json()
    assert ([b["id"] for b in third["data"]], third["has_more"]) == (newest_first[4:], False)
    assert all(b["results"] is None for b in first["data"] + second["data"] + third["data"])
    # Default page size is 20: all five.
    assert len((await api(simulator, "GET", "batches")).json()["data"]) == 5
    await api(simulator, "POST", f"batches/{ids[0]}/cancel")
    await wait_for_batch(simulator, ids[0], ("cancelled",))
    by_status = (await api(simulator, "GET", "batches?status=cancelled&status=completed")).json()
    assert [b["id"] for b in by_status["data"]] == [ids[0]]
    running = (await api(simulator, "GET", "batches", params={"status": "in_progress"})).json()["data"]
    assert {b["id"] for b in running} <= set(ids[1:])
    created = (await api(simulator, "GET", f"batches/{ids[-1]}")).json()["created_at"]  # the newest
    assert (
        len((await api(simulator, "GET", "batches", params={"created_after": created + 1})).json()["data"])
        == 0
    )
    assert (
        len(
            (
                await api(simulator, "GET", "batches", params={"created_before": "2000-01-01T00:00:00Z"})
            ).json()["data"]
        )
        == 0
    )
    assert (
        len(
            (await api(simulator, "GET", "batches", params={"created_after": "2000-01-01T00:00:00Z"})).json()[
                "data"
            ]
        )
        == 5
    )
    for params in (
        {"limit": 0},
        {"limit": 101},
        {"status": "done"},
        {"after": "batch_nope"},
        {"created_after": "soon"},
    ):
        assert (await api(simulator, "GET", "batches", params=params)).status_code == 400, params


# --- cancel, delete, get ----------------------------------------------------------------------------------


async def test_cancel_answers_the_batch_as_is_then_it_is_cancelling_then_cancelled_with_no_rows(
    simulator: Simulator,
) -> None:
    await simulator.configure(batch_in_progress_seconds=5.0, batch_cancel_seconds=1.5)
    batch = await create_batch(simulator, batch_body(chat_requests(*"abcdefghij")))
    running = await wait_for_batch(simulator, batch["id"], ("in_progress",))
    answer = await api(simulator, "POST", f"batches/{batch['id']}/cancel")
    assert answer.status_code == 200
    assert answer.json()["status"] == "in_progress"
    assert answer.json()["id"] == running["id"]
    assert (await api(simulator, "GET", f"batches/{batch['id']}")).json()["status"] == "cancelling"
    assert (
        await api(simulator, "POST", f"batches/{batch['id']}/cancel")
    ).status_code == 200  # safe to repeat
    done = await wait_for_batch(simulator, batch["id"])
    assert done["status"] == "cancelled"
    assert done["results"] == []
    page = (await api(simulator, "GET", f"batches/{batch['id']}/results")).json()
    assert (page["data"], page["has_more"]) == ([], False)
    # What was answered before the cancel is still counted and billed; nothing after it.
    answered = done["request_counts"]["completed"]
    assert answered < 10
    assert sum(line["answered"] for line in (await simulator.batches())[0]["lines"]) == answered
    once_final = await api(simulator, "POST", f"batches/{batch['id']}/cancel")
    assert once_final.status_code == 409


async def test_cancel_can_be_switched_off_with_a_403(simulator: Simulator) -> None:
    await simulator.configure(batch_cancel_allowed=False, batch_in_progress_seconds=60)
    batch = await create_batch(simulator, batch_body(chat_requests("x")))
    refused = await api(simulator, "POST", f"batches/{batch['id']}/cancel")
    assert refused.status_code == 403
    assert (await api(simulator, "GET", f"batches/{batch['id']}")).json()["status"] in (
        "validating",
        "in_progress",
    )


async def test_delete_only_a_finished_batch_then_it_is_gone(simulator: Simulator) -> None:
    await simulator.configure(batch_in_progress_seconds=1.0)
    batch = await create_batch(simulator, batch_body(chat_requests("x")))
    early = await api(simulator, "DELETE", f"batches/{batch['id']}")
    assert early.status_code == 409
    await wait_for_batch(simulator, batch["id"])
    deleted = await api(simulator, "DELETE", f"batches/{batch['id']}")
    assert deleted.status_code == 200
    assert deleted.json() == {
        "id": batch["id"],
        "object": "batch",
        "deletion": {"openrouter": "deleted", "upstream": {"provider": "SimProvider", "status": "deleted"}},
    }
    for method, path in (("GET", ""), ("GET", "/results"), ("DELETE", ""), ("POST", "/cancel")):
        assert (await api(simulator, method, f"batches/{batch['id']}{path}")).status_code == 404
    assert (await api(simulator, "GET", "batches")).json()["data"] == []
    assert (await simulator.batches())[0]["deleted"] is True
    # A batch that never reached a provider is deleted without an upstream.
    failed = await finished(simulator, batch_body(chat_requests("x"), model="sim/spare:batch"))
    gone = (await api(simulator, "DELETE", f"batches/{failed['id']}")).json()
    assert gone["deletion"] == {"openrouter": "deleted"}


async def test_an_unknown_batch_is_a_404(simulator: Simulator) -> None:
    for method, path in ROUTES[2:]:
        missing = await api(simulator, method, path)
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == 404


async def test_an_unpaid_batch_answers_402_with_its_results_withheld_until_credits_cover_it(
    simulator: Simulator,
) -> None:
    done = await finished(simulator, batch_body(chat_requests("x" * 400)))
    assert done["usage"]["cost"] > 0
    await simulator.configure(credits=done["usage"]["cost"] / 10)
    withheld = await api(simulator, "GET", f"batches/{done['id']}")
    assert withheld.status_code == 402
    body = withheld.json()
    assert (body["id"], body["status"], body["results"]) == (done["id"], "completed", None)
    assert body["error"] == {
        "code": 402,
        "message": "Insufficient credits. Add more using https://openrouter.ai/credits",
    }
    assert (await api(simulator, "GET", f"batches/{done['id']}/results")).status_code == 402
    await simulator.configure(credits=100)
    paid = (await api(simulator, "GET", f"batches/{done['id']}")).json()
    assert paid["results"] == done["results"]  # not run again


# --- the callback -----------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def receiver(status: int = 200) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """An HTTP endpoint on loopback that keeps what is POSTed to it and answers `status`."""
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/hook", received
    finally:
        await runner.cleanup()


async def test_one_callback_post_at_the_terminal_status(simulator: Simulator) -> None:
    async with receiver() as (url, received):
        completed = await finished(simulator, batch_body(chat_requests("x"), callback_url=url))
        failed = await finished(
            simulator, batch_body(chat_requests("x"), model="sim/spare:batch", callback_url=url)
        )

        async def both_recorded() -> bool:
            return len(received) == 2 and all(v["callbacks"] for v in await simulator.batches())

        await until(both_recorded, "two callbacks delivered")
        # The payload is the simulator's invention (OpenRouter documents none): the event and the batch.
        assert sorted(received, key=str) == sorted(
            [
                {"type": "batch.completed", "data": {"id": completed["id"]}},
                {"type": "batch.failed", "data": {"id": failed["id"]}},
            ],
            key=str,
        )
        views = await simulator.batches()
        assert [[c["status"] for c in v["callbacks"]] for v in views] == [[200], [200]]


async def test_a_callback_that_fails_is_tried_three_times_then_given_up(simulator: Simulator) -> None:
    async with receiver(status=500) as (url, received):
        await finished(simulator, batch_body(chat_requests("x"), callback_url=url))

        async def three_attempts() -> list[object] | None:
            statuses = [c.get("status") for c in (await simulator.batches())[0]["callbacks"]]
            return statuses if len(statuses) == 3 else None

        assert await until(three_attempts, "three attempts recorded", seconds=30) == [500, 500, 500]
        assert len(received) == 3
    assert "batch_callback_given_up" in simulator.log_path.read_text()


# --- scripted failures of the routes ----------------------------------------------------------------------


async def test_the_batch_routes_can_be_made_to_answer_429_and_5xx(simulator: Simulator) -> None:
    await simulator.configure(
        rules=[
            {"route": "batches.create", "status": 429, "times": 1, "headers": {"Retry-After": "1"}},
            {"route": "batches.get", "status": 502, "times": 2},
        ]
    )
    limited = await api(simulator, "POST", "batches", json=batch_body(chat_requests("x")))
    assert limited.status_code == 429
    assert limited.json()["error"] == {"code": 429, "message": "Rate limit exceeded"}
    assert limited.headers["Retry-After"] == "1"
    batch = await create_batch(simulator, batch_body(chat_requests("x")))
    for _ in range(2):
        failed = await api(simulator, "GET", f"batches/{batch['id']}")
        assert (failed.status_code, failed.json()["error"]["message"]) == (502, "Provider returned error")
    assert (await api(simulator, "GET", f"batches/{batch['id']}")).status_code == 200
    await simulator.configure(rules=[{"route": "batches", "status": 503}])
    for method, path in ROUTES:
        assert (
            await api(simulator, method, path.replace("batch_x", batch["id"]), json={})
        ).status_code == 503


# --- embeddings lines -------------------------------------------------------------------------------------


async def test_embeddings_lines_give_one_vector_per_input_at_half_the_live_price(
    simulator: Simulator,
) -> None:
    body = batch_body(
        [
            {"custom_id": "emb-0001", "body": {"input": ["text a", "text b"]}},
            {"custom_id": "emb-0002", "body": {"input": "text c", "dimensions": 4}},
            {"custom_id": "emb-0003", "body": {"input": [[1, 2, 3]], "encoding_format": "base64"}},
            {"custom_id": "emb-0004", "body": {"input": ""}},
        ],
        model="sim/embed:batch",
        endpoint="/v1/embeddings",
    )
    done = await finished(simulator, body)
    lines = {r["custom_id"]: r["response"] for r in done["results"]}
    first = lines["emb-0001"]["body"]
    assert first["object"] == "list"
    assert [(d["object"], d["index"], len(d["embedding"])) for d in first["data"]] == [
        ("embedding", 0, 8),
        ("embedding", 1, 8),
    ]
    assert [len(d["embedding"]) for d in lines["emb-0002"]["body"]["data"]] == [4]
    assert isinstance(lines["emb-0003"]["body"]["data"][0]["embedding"], str)
    assert lines["emb-0004"]["status_code"] == 400  # an empty input fails its line, not the batch
    assert done["request_counts"] == {"total": 4, "completed": 3, "failed": 1}
    live = (
        await api(simulator, "POST", "embeddings", json={"model": "sim/embed", "input": ["text a", "text b"]})
    ).json()
    assert [d["embedding"] for d in first["data"]] == [d["embedding"] for d in live["data"]]
    assert first["usage"]["prompt_tokens"] == live["usage"]["prompt_tokens"]
    assert first["usage"]["cost"] == pytest.approx(live["usage"]["cost"] / 2, rel=1e-9)
    assert done["usage"]["completion_tokens"] == 0
    assert [c["path"] for c in await simulator.calls()] == ["/embeddings"]


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ({"input": "x", "input_type": "search_query"}, "input_type"),
        ({"input": "x", "provider": {"only": ["openai"]}}, "provider"),
        ({"input": [{"content": [{"type": "text", "text": "x"}]}]}, "multimodal"),
    ],
    ids=["input_type", "provider", "multimodal"],
)
async def test_embeddings_lines_may_not_carry_input_type_provider_or_multimodal_input(
    simulator: Simulator, line: dict[str, Any], words: str
) -> None:
    body = batch_body([{"custom_id": "e", "body": line}], model="sim/embed:batch", endpoint="/v1/embeddings")
    refused = await api(simulator, "POST", "batches", json=body)
    assert refused.status_code == 400
    assert words in refused.json()["error"]["message"]


async def test_embeddings_line_failures_are_injectable_as_chat_ones_are(simulator: Simulator) -> None:
    await simulator.configure(
        rules=[{"custom_id": "e1", "kind": "line_error"}, {"match": "busy", "kind": "status", "status": 429}]
    )
    body = batch_body(
        [{"custom_id": f"e{i}", "body": {"input": text}} for i, text in enumerate(["ok", "id one", "busy"])],
        model="sim/embed:batch",
        endpoint="/v1/embeddings",
    )
    lines = {r["custom_id"]: r for r in (await finished(simulator, body))["results"]}
    assert lines["e0"]["response"]["status_code"] == 200
    assert lines["e1"]["error"]["type"] == "server_error"
    assert lines["e2"]["response"]["status_code"] == 429
