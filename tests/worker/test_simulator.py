"""The simulator itself: OpenRouter's real catalogue and prices, scaled time, the limits in GET /key, failure shapes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from decimal import Decimal
from functools import cache
from typing import Any

import httpx
import orjson
import pytest
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from jobs.simulator.main import config_from_args
from tests.support import ROOT, TEST_API_KEY, Simulator
from tests.worker.test_openrouter import SPEC

AUTH = {"Authorization": f"Bearer {TEST_API_KEY}"}


@cache
def spec_validator(pointer: str) -> Draft202012Validator:
    spec = yaml.load(SPEC.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 (a safe loader)
    resource: Resource[Any] = Resource.from_contents(spec, default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource("urn:openrouter", resource)
    return Draft202012Validator({"$ref": f"urn:openrouter#{pointer}"}, registry=registry)


def chat(text: str, model: str = "sim/echo", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def post_chat(simulator: Simulator, body: dict[str, Any], **options: Any) -> httpx.Response:
    async with httpx.AsyncClient(**options) as client:
        return await client.post(f"{simulator.base_url}/chat/completions", json=body, headers=AUTH)


async def get(simulator: Simulator, path: str) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"{simulator.base_url}/{path}", headers=AUTH)


# --- the catalogue ---------------------------------------------------------------------------------------


async def test_models_lists_openrouters_catalogue_its_free_variants_and_the_test_models(
    simulator: Simulator,
) -> None:
    response = await get(simulator, "models")
    listing = response.json()
    errors = [
        e.message for e in spec_validator("/components/schemas/ModelsListResponse").iter_errors(listing)
    ]
    assert not errors, errors[:5]
    models = {m["id"]: m for m in listing["data"]}
    assert listing["total_count"] == len(models) > 400
    assert models["openai/gpt-4o-mini"]["pricing"]["prompt"] == "0.00000015"
    assert len([m for m in models if m.endswith(":free")]) > 15
    # Withdrawn models the examples name, and the tests' own.
    assert {"meta-llama/llama-3.3-70b-instruct:free", "anthropic/claude-3.5-sonnet"} <= models.keys()
    assert {"sim/echo", "sim/echo:free", "sim/backup", "sim/spare", "sim/last-resort"} <= models.keys()


async def test_a_listed_model_is_answered_and_billed_at_its_listed_prices(simulator: Simulator) -> None:
    pricing = {m["id"]: m["pricing"] for m in (await get(simulator, "models")).json()["data"]}
    text = "How many moons has Mars? " * 8
    answer = (await post_chat(simulator, chat(text, "anthropic/claude-3.5-sonnet"))).json()
    assert answer["model"] == "anthropic/claude-3.5-sonnet"
    usage = answer["usage"]
    expected = (
        Decimal(pricing["anthropic/claude-3.5-sonnet"]["prompt"]) * usage["prompt_tokens"]
        + Decimal(pricing["anthropic/claude-3.5-sonnet"]["completion"]) * usage["completion_tokens"]
    )
    assert Decimal(str(usage["cost"])) == expected > 0
    unknown = await post_chat(simulator, chat("hi", "anthropic/claude-2-not-listed"))
    assert unknown.status_code == 400
    assert "not a valid model ID" in unknown.json()["error"]["message"]


async def test_a_per_request_price_is_added_to_the_token_prices(simulator: Simulator) -> None:
    await simulator.configure(
        models=[{"id": "a/priced", "prompt": "0.000001", "completion": "0.000002", "request": "0.005"}]
    )
    usage = (await post_chat(simulator, chat("x" * 400, "a/priced"))).json()["usage"]
    tokens = Decimal("0.000001") * usage["prompt_tokens"] + Decimal("0.000002") * usage["completion_tokens"]
    assert Decimal(str(usage["cost"])) == tokens + Decimal("0.005")


# --- time and the limits in /key --------------------------------------------------------------------------


async def test_key_reports_the_real_fields_and_the_simulators_limits(simulator: Simulator) -> None:
    await simulator.configure(free_per_minute=20, free_per_day=50)
    body = (await get(simulator, "key")).json()
    errors = [
        e.message
        for e in spec_validator(
            "/paths/~1key/get/responses/200/content/application~1json/schema"
        ).iter_errors(body)
    ]
    assert not errors, errors
    assert body["data"]["is_free_tier"] is True
    limits = body["data"]["simulator"]
    now = time.time()
    assert limits["free_per_minute"] == 20
    assert limits["free_window_seconds"] == 60
    assert limits["free_per_day"] == 50
    assert limits["speed"] == 1
    # At speed 1 the days are UTC days: today's began at the last midnight.
    assert limits["day_seconds"] == 86400
    assert limits["day_started_at"] == now // 86400 * 86400


async def test_speed_scales_the_minute_and_the_day_and_the_429_says_when_the_day_ends(
    simulator: Simulator,
) -> None:
    await simulator.configure(speed=10, free_per_minute=1000, free_per_day=2)
    limits = (await get(simulator, "key")).json()["data"]["simulator"]
    assert (limits["free_window_seconds"], limits["day_seconds"], limits["speed"]) == (6, 8640, 10)
    assert limits["day_started_at"] <= time.time() < limits["day_started_at"] + 8640
    assert limits["day_started_at"] % 8640 == 0
    assert [(await post_chat(simulator, chat("q", "sim/echo:free"))).status_code for _ in range(2)] == [
        200,
        200,
    ]
    limited = await post_chat(simulator, chat("q", "sim/echo:free"))
    assert limited.status_code == 429
    assert "free-models-per-day" in limited.json()["error"]["message"]
    assert int(limited.headers["X-RateLimit-Reset"]) == (limits["day_started_at"] + 8640) * 1000


async def test_a_call_refused_for_the_minute_still_counts_against_the_day(simulator: Simulator) -> None:
    await simulator.configure(free_per_minute=2, free_per_day=3)
    statuses = [(await post_chat(simulator, chat("q", "sim/echo:free"))).status_code for _ in range(4)]
    # The third is refused for the minute and spends the day's last attempt; the fourth meets the day's limit.
    assert statuses == [200, 200, 429, 429]
    refused = await post_chat(simulator, chat("q", "sim/echo:free"))
    assert "free-models-per-day" in refused.json()["error"]["message"]
    assert (await simulator.stats())["day_count"] == 3


async def test_an_explicit_window_or_day_overrides_the_speed(simulator: Simulator) -> None:
    await simulator.configure(speed=10, day_seconds=30)
    limits = (await get(simulator, "key")).json()["data"]["simulator"]
    assert (limits["free_window_seconds"], limits["day_seconds"]) == (6, 30)
    assert config_from_args(["--speed", "10", "--free-window-seconds", "2"]).free_window_seconds == 2


def test_the_command_line_takes_the_speed_and_the_account() -> None:
    scaled = config_from_args(["--speed", "10"])
    assert (scaled.free_window_seconds, scaled.day_seconds, scaled.free_per_day) == (6, 8640, 50)
    real = config_from_args([])
    assert (real.free_window_seconds, real.day_seconds, real.free_per_day, real.speed) == (60, None, 50, 1)
    bought = config_from_args(["--no-free-tier", "--credits", "10"])
    assert (bought.is_free_tier, bought.free_per_day, bought.credits) == (False, 1000, 10)
    # The options ORBATCH_SIMULATOR_ARGS has always taken.
    old = config_from_args(["--free-window-seconds", "1", "--free-per-day", "100000", "--latency-ms", "5"])
    assert (old.free_window_seconds, old.free_per_day, old.latency_ms) == (1, 100000, 5)
    with pytest.raises(SystemExit) as refused:
        config_from_args(["--speed", "0"])
    assert refused.value.code == 2


def test_help_lists_every_option_with_its_default() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "jobs.simulator", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"},
    ).stdout
    for option in (
        "--host",
        "--port",
        "--latency-ms",
        "--free-per-minute",
        "--free-window-seconds",
        "--free-per-day",
        "--day-seconds",
        "--speed",
        "--free-tier",
        "--credits",
        "--no-record",
    ):
        assert option in shown
    assert "[default: 8787]" in shown
    assert "[default: 1.0]" in shown


# --- failure shapes ---------------------------------------------------------------------------------------


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
