"""The simulator's scripted failures: trickles, delays, oversized bodies, outages of OpenRouter or its providers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
import pytest

from tests.jobs.simulator.client import AUTH, chat, get, post_chat
from tests.support import Simulator


async def test_a_trickle_keeps_a_per_read_timeout_from_ever_firing(simulator: Simulator) -> None:
    await simulator.configure(rules=[{"match": "slow", "kind": "trickle", "seconds": 2.5, "interval": 0.3}])
    started = time.monotonic()
    response = await post_chat(simulator, chat("slow please"), timeout=httpx.Timeout(5, read=1.0))
    assert time.monotonic() - started >= 2.5
    assert response.status_code == 200
    assert response.content.startswith(b"   ")  # whitespace before the body, as gateways send
    assert orjson.loads(response.content)["choices"][0]["message"]["content"] == "echo: slow please"
    assert (await simulator.stats())["outcome:trickle"] == 1
    assert [c["outcome"] for c in await simulator.calls()] == ["trickle"]


async def test_an_endless_trickle_is_bounded_only_by_a_total_deadline(simulator: Simulator) -> None:
    await simulator.configure(rules=[{"match": "forever", "kind": "trickle", "sse": True, "interval": 0.2}])
    received = bytearray()

    async def read_all() -> None:
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(5, read=1.0)) as client,
            client.stream(
                "POST", f"{simulator.base_url}/chat/completions", json=chat("forever"), headers=AUTH
            ) as response,
        ):
            assert response.headers["content-type"] == "text/event-stream"
            async for chunk in response.aiter_bytes():
                received.extend(chunk)

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(read_all(), 2.5)
    assert received.startswith(b": OPENROUTER PROCESSING\n\n" * 5)


async def test_an_sse_trickle_that_ends_sends_the_answer_as_a_stream_does(simulator: Simulator) -> None:
    await simulator.configure(rules=[{"match": "sse", "kind": "trickle", "sse": True, "seconds": 0.5}])
    body = (await post_chat(simulator, chat("sse"))).content
    comments, events = body.split(b"data: ", 1)
    assert set(comments.split(b"\n\n")) == {b": OPENROUTER PROCESSING", b""}
    chunk, done = events.split(b"\n\n", 1)
    assert done == b"data: [DONE]\n\n"
    assert orjson.loads(chunk)["choices"][0]["delta"]["content"] == "echo: sse"


async def test_a_rule_can_answer_after_a_delay(simulator: Simulator) -> None:
    await simulator.configure(rules=[{"match": "late", "kind": "status", "status": 500, "delay": 1.5}])
    started = time.monotonic()
    response = await post_chat(simulator, chat("late"))
    assert response.status_code == 500
    assert time.monotonic() - started >= 1.5


async def test_a_big_answer_is_a_valid_completion_of_the_size_asked(simulator: Simulator) -> None:
    await simulator.configure(rules=[{"match": "huge", "kind": "big", "size": 3_000_000}])
    response = await post_chat(simulator, chat("huge"))
    assert len(response.content) == 3_000_000
    content = orjson.loads(response.content)["choices"][0]["message"]["content"]
    assert len(content) > 2_990_000
    assert (await simulator.stats())["outcome:big"] == 1


async def test_an_outage_of_openrouter_fails_every_endpoint_until_it_ends(simulator: Simulator) -> None:
    await simulator.configure(outage_status=503)
    for _ in range(3):
        failed = await post_chat(simulator, chat("anyone there?"))
        assert failed.status_code == 503
        assert "provider_name" not in failed.json()["error"].get("metadata", {})
    assert (await get(simulator, "models")).status_code == 503
    assert (await get(simulator, "key")).status_code == 503
    stats = await simulator.stats()
    assert (stats["outcome:outage"], stats["status:503"]) == (3, 3)
    assert [c["body"]["messages"][0]["content"] for c in await simulator.calls()] == ["anyone there?"] * 3
    await simulator.configure(outage_status=None)
    assert (await post_chat(simulator, chat("back"))).status_code == 200


async def test_an_outage_of_the_providers_names_one_while_openrouter_still_answers(
    simulator: Simulator,
) -> None:
    await simulator.configure(outage_status=502, outage_provider_name="SimProvider")
    body = {"models": ["sim/echo", "sim/backup"], "messages": [{"role": "user", "content": "hello"}]}
    failed = await post_chat(simulator, body)
    assert failed.status_code == 502
    assert failed.json()["error"]["metadata"]["provider_name"] == "SimProvider"
    assert (await get(simulator, "models")).status_code == 200
    assert (await get(simulator, "key")).status_code == 200
    # OpenRouter still checks the call first: an unknown model is a 400, not the outage.
    assert (await post_chat(simulator, chat("hello", "no/such-model"))).status_code == 400


LABEL_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "label",
        "schema": {
            "type": "object",
            "properties": {"label": {"enum": ["good", "bad"]}},
            "required": ["label"],
        },
    },
}


async def _contents(simulator: Simulator, bodies: list[dict[str, Any]]) -> list[str]:
    answers = [await post_chat(simulator, body) for body in bodies]
    return [orjson.loads(a.content)["choices"][0]["message"]["content"] for a in answers]


async def test_a_model_that_errs_fails_its_schema_at_its_rate_and_answers_a_correction_right(
    simulator: Simulator,
) -> None:
    await simulator.configure(err_rate={"sim/echo": 0.5})
    bodies = [chat(f"review {i}", response_format=LABEL_FORMAT) for i in range(200)]
    wrong = [
        c for c in await _contents(simulator, bodies) if c not in ('{"label":"good"}', '{"label":"bad"}')
    ]
    assert 60 < len(wrong) < 140
    assert all(not c.endswith("}") for c in wrong)  # invalid JSON: a valid reply cut short
    # A correction turn (the invalid reply, then a user turn) is always answered right, for the same record.
    corrected = chat("review 0", response_format=LABEL_FORMAT)
    corrected["messages"] += [{"role": "assistant", "content": "{"}, {"role": "user", "content": "fix it"}]
    for _ in range(20):
        (content,) = await _contents(simulator, [corrected])
        assert orjson.loads(content)["label"] in ("good", "bad")
    # A request that asks for no schema is untouched.
    assert (await _contents(simulator, [chat("review 1")])) == ["echo: review 1"]


async def test_a_model_that_errs_with_a_fixed_wrong_label(simulator: Simulator) -> None:
    await simulator.configure(err_rate={"sim/echo": 1.0}, err_label="unsure")
    (content,) = await _contents(simulator, [chat("review 3", response_format=LABEL_FORMAT)])
    assert orjson.loads(content) == {"label": "unsure"}
