"""Every answer OpenRouter can give maps to exactly one class: success, retry, fall back, park or fail."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest

from jobs.core.states import Outcome, PauseReason
from worker.classify import Failure, Success, classify
from worker.openrouter import CallResult


def answer(status: int, body: Any, headers: dict[str, str] | None = None) -> CallResult:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return CallResult(latency_ms=5, status=status, headers=httpx.Headers(headers or {}), raw=raw)


def error(status: int, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": status, "message": message, **extra}, "user_id": "u"}


COMPLETION = {
    "id": "gen-1",
    "provider": "P",
    "model": "m/served",
    "object": "chat.completion",
    "created": 1,
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}],
    "usage": {
        "prompt_tokens": 10,
        "completion_tokens": 3,
        "total_tokens": 13,
        "cost": 0.000123,
        "is_byok": False,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 2},
        "cost_details": {"upstream_inference_cost": 0.5},
    },
}


def test_a_completion_is_a_success_with_usage_and_exact_cost() -> None:
    result = classify(answer(200, COMPLETION))
    assert isinstance(result, Success)
    assert (result.model, result.provider, result.generation_id) == ("m/served", "P", "gen-1")
    assert (result.content, result.finish_reason) == ("hi", "stop")
    usage = result.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.reasoning_tokens) == (
        10,
        3,
        4,
        2,
    )
    # Not BYOK: upstream_inference_cost is not the user's cost and is never added.
    assert usage.cost == Decimal("0.000123")


def test_byok_cost_is_the_upstream_inference_cost() -> None:
    body = orjson.loads(orjson.dumps(COMPLETION))
    body["usage"]["is_byok"] = True
    result = classify(answer(200, body))
    assert isinstance(result, Success)
    assert result.usage.cost == Decimal("0.5")


CASES: list[tuple[str, CallResult, Outcome, PauseReason | None]] = [
    ("400 bad request", answer(400, error(400, "m is not a valid model ID")), Outcome.FAIL, None),
    ("401 bad key", answer(401, error(401, "User not found.")), Outcome.PARK, PauseReason.AUTH),
    ("402 no credits", answer(402, error(402, "Insufficient credits")), Outcome.PARK, PauseReason.CREDITS),
    (
        "402 in-flight budget",
        answer(402, error(402, "budget", code="openrouter_in_flight_budget"), {"Retry-After": "3"}),
        Outcome.RETRY,
        None,
    ),
    ("403 moderation", answer(403, error(403, "Input was flagged")), Outcome.FAIL, None),
    ("403 key limit", answer(403, error(403, "Key limit exceeded")), Outcome.PARK, PauseReason.CREDITS),
    ("404 no endpoints", answer(404, error(404, "No endpoints found")), Outcome.FALLBACK, None),
    ("408 timeout", answer(408, error(408, "Timed out")), Outcome.RETRY, None),
    (
        "429 per minute",
        answer(429, error(429, "Rate limit exceeded: free-models-per-min. ")),
        Outcome.RETRY,
        None,
    ),
    (
        "429 per day",
        answer(429, error(429, "Rate limit exceeded: free-models-per-day. ")),
        Outcome.PARK,
        PauseReason.QUOTA,
    ),
    ("500", answer(500, error(500, "Internal")), Outcome.RETRY, None),
    ("502 provider down", answer(502, error(502, "Provider returned error")), Outcome.FALLBACK, None),
    ("503 unavailable", answer(503, error(503, "unavailable")), Outcome.FALLBACK, None),
    ("504", answer(504, error(504, "gateway timeout")), Outcome.RETRY, None),
    (
        "error inside a 200 choice",
        answer(
            200,
            {
                **COMPLETION,
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "error",
                        "message": {"role": "assistant", "content": ""},
                        "error": {"code": 502, "message": "upstream"},
                    }
                ],
            },
        ),
        Outcome.RETRY,
        None,
    ),
    ("top-level error in a 200", answer(200, error(502, "Provider returned error")), Outcome.FALLBACK, None),
    (
        "top-level 429 in a 200 with a string code",
        answer(200, {"error": {"code": "429", "message": "Rate limit exceeded: x"}}),
        Outcome.RETRY,
        None,
    ),
    (
        "top-level error in a 200 with a word code",
        answer(200, {"error": {"code": "server_error", "message": "oops"}}),
        Outcome.RETRY,
        None,
    ),
    ("200 that is not JSON", answer(200, b"<html>oops</html>"), Outcome.RETRY, None),
    ("502 that is not JSON", answer(502, b"<html>Bad Gateway</html>"), Outcome.RETRY, None),
    ("200 with no choices and no error", answer(200, {"id": "x"}), Outcome.RETRY, None),
    (
        "connection reset",
        CallResult(latency_ms=1, transport_error=httpx.ReadError("Connection reset by peer")),
        Outcome.RETRY,
        None,
    ),
    (
        "read timeout",
        CallResult(latency_ms=1, transport_error=httpx.ReadTimeout("timed out")),
        Outcome.RETRY,
        None,
    ),
    (
        "connection refused",
        CallResult(latency_ms=1, transport_error=httpx.ConnectError("refused")),
        Outcome.RETRY,
        None,
    ),
]


@pytest.mark.parametrize(("name", "call", "outcome", "park"), CASES, ids=[c[0] for c in CASES])
def test_every_error_shape_has_one_class(
    name: str, call: CallResult, outcome: Outcome, park: PauseReason | None
) -> None:
    result = classify(call)
    assert isinstance(result, Failure), name
    assert result.outcome is outcome
    assert result.park_reason is park


def test_a_400_keeps_openrouters_message() -> None:
    result = classify(answer(400, error(400, "foo/bar is not a valid model ID")))
    assert isinstance(result, Failure)
    assert result.message == "foo/bar is not a valid model ID"


def test_a_429_waits_until_the_reset_it_names_from_headers_or_metadata() -> None:
    import time

    reset_ms = str(int((time.time() + 30) * 1000))
    from_headers = classify(
        answer(429, error(429, "Rate limit exceeded: free-models-per-min. "), {"X-RateLimit-Reset": reset_ms})
    )
    from_metadata = classify(
        answer(
            429,
            error(
                429,
                "Rate limit exceeded: free-models-per-min. ",
                metadata={"headers": {"X-RateLimit-Reset": reset_ms}},
            ),
        )
    )
    for result in (from_headers, from_metadata):
        assert isinstance(result, Failure)
        assert result.retry_after is not None
        assert 25 < result.retry_after <= 30


def test_a_spent_daily_quota_resumes_at_the_reset_it_names() -> None:
    result = classify(
        answer(
            429,
            error(429, "Rate limit exceeded: free-models-per-day. "),
            {"X-RateLimit-Reset": "1800000000000"},
        )
    )
    assert isinstance(result, Failure)
    assert result.resume_at is not None
    assert result.resume_at.timestamp() == 1_800_000_000


def embeddings(*indices: int) -> dict[str, Any]:
    return {
        "id": "embd-1",
        "object": "list",
        "model": "m/embed",
        "data": [{"object": "embedding", "index": i, "embedding": [0.1 * i, 0.2]} for i in indices],
        "usage": {"prompt_tokens": 6, "total_tokens": 6, "cost": 0.00001},
    }


def test_an_embeddings_answer_with_a_vector_per_input_is_a_success_with_its_cost() -> None:
    result = classify(answer(200, embeddings(1, 0)), {"input": ["a", "b"]})
    assert isinstance(result, Success)
    assert (result.model, result.generation_id, result.content) == ("m/embed", "embd-1", None)
    assert (result.usage.prompt_tokens, result.usage.cost) == (6, Decimal("0.00001"))


@pytest.mark.parametrize(
    ("body", "request_input"),
    [
        (embeddings(0), ["a", "b"]),  # one vector for two inputs
        (embeddings(0, 0), ["a", "b"]),  # two vectors, both for the first input
        ({"object": "list", "model": "m/embed"}, "a"),  # no data at all
    ],
)
def test_an_embeddings_answer_short_of_vectors_is_retried(body: dict[str, Any], request_input: Any) -> None:
    result = classify(answer(200, body), {"input": request_input})
    assert isinstance(result, Failure)
    assert (result.outcome, result.code) == (Outcome.RETRY, "invalid_embeddings")


def test_an_error_inside_an_embeddings_200_is_classed_by_its_code() -> None:
    result = classify(answer(200, error(502, "Provider returned error")), {"input": "a"})
    assert isinstance(result, Failure)
    assert result.outcome is Outcome.FALLBACK
