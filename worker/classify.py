"""Turn one upstream answer into a success or a failure class: retry later, fall back, park or fail now.

The table, also in docs/errors.md ("wait" is a retry that spends none of the request's attempts):

| what came back                                   | class     | why                                            |
|--------------------------------------------------|-----------|------------------------------------------------|
| HTTP 200 with choices and no error               | success   |                                                |
| HTTP 200 embeddings, one vector per input        | success   | the vectors are the answer's content (JSON)    |
| HTTP 200 embeddings, vectors missing or miscounted | retry   | `invalid_embeddings`: a provider's bad answer  |
| HTTP 200, `choices[0].error` / finish "error"    | retry     | the provider failed mid-answer; try again      |
| HTTP 200, top-level `error`, no `choices`        | by its code, as the HTTP status of the same number |
| body that is not JSON (any status)               | retry     | a proxy or a cut connection, not an answer     |
| connection refused, DNS, TLS, connect timeout    | outage    | OpenRouter unreachable: the fleet's breaker    |
| past the call's deadline (trickling or not)      | retry     | `timeout`; one of a run for the breaker        |
| connection reset mid-answer, read timeout        | retry     | transient; one of a run for the breaker        |
| answer over ORBATCH_MAX_RESPONSE_BYTES           | fail      | `response_too_large`, its usage kept           |
| 400 (bad request, unknown model)                 | fail      | sending it again gives the same answer         |
| 401                                              | park auth | the key is wrong: stop the batch, no storm     |
| 402 with Retry-After / in-flight budget          | wait      | OpenRouter's spending budget frees up shortly  |
| 402 otherwise                                    | park credits | no credits: nothing works until a top-up    |
| 403 key limit                                    | park credits | the key's own limit is spent                |
| 403 otherwise (moderation)                       | fail      | the input was flagged                          |
| 404 (no endpoint for these models)               | fall back | move on to the next models of the chain        |
| 408, 500, 504 and other 5xx                      | retry     | transient                                      |
| 429 naming a provider (`metadata.provider_name`) | fall back | that provider's limit, not the account's       |
| 429 `free-models-per-day`                        | park quota | until the reset it names, else 00:00 UTC      |
| 429 otherwise                                    | wait      | every worker holds until the reset it names    |
| 502, 503 (provider down)                         | fall back | every model of this window failed              |
| other 4xx                                        | fail      |                                                |
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
import orjson

from jobs.core.logs import redact
from jobs.core.states import Outcome, PauseReason
from jobs.formats.input_lines import EMBEDDINGS_URL, embedding_inputs, endpoint_of
from worker.openrouter import CallDeadline, CallResult
from worker.throttle import Verdict

__all__ = ["Failure", "Success", "Usage", "classify", "next_utc_midnight", "usage_of"]

# Upstream error messages can be whole HTML pages; the database keeps their start.
ERROR_MESSAGE_MAX_CHARS = 2000


@dataclass(slots=True)
class Usage:
    """Tokens and cost of one call, as OpenRouter reported them."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reasoning_tokens: int | None = None
    cached_tokens: int | None = None
    cost: Decimal | None = None
    # True when OpenRouter reported no cost and it was computed from the model's list prices.
    cost_estimated: bool = False


@dataclass(slots=True)
class Success:
    """A usable answer."""

    status: int
    raw: bytes
    model: str | None
    provider: str | None
    generation_id: str | None
    content: str | None
    finish_reason: str | None
    usage: Usage


@dataclass(slots=True)
class Failure:
    """A call that produced no usable answer, and what to do about it."""

    outcome: Outcome
    code: str
    message: str
    status: int | None = None
    retry_after: float | None = None
    park_reason: PauseReason | None = None
    resume_at: datetime | None = None
    # A limit of the account (a 429 naming no provider, the in-flight budget): the request waits without
    # spending an attempt, and a 429's reset holds every worker until then.
    spends_attempt: bool = True
    cooldown_until: datetime | None = None
    model: str | None = None
    provider: str | None = None
    generation_id: str | None = None
    usage: Usage | None = None
    # What the call says of OpenRouter as a whole, for the outage breaker (see worker.throttle.Verdict).
    verdict: Verdict = "none"
    # An `invalid_output`'s reply (bounded), kept on its attempt for the next attempt's correction turn.
    reply: str | None = None


def next_utc_midnight(now: datetime | None = None) -> datetime:
    """The next 00:00 UTC, when OpenRouter's daily free quota resets."""
    now = now or datetime.now(UTC)
    return (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def usage_of(body: dict[str, Any]) -> Usage:
    """The tokens and cost an answer's body reports (its `usage`)."""
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return Usage()
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    cost: Any = usage.get("cost")
    # BYOK calls bill the provider's price to the user's own account; OpenRouter's `cost` is then only
    # its fee, and the upstream cost is what the user pays. It is never added on top otherwise.
    if usage.get("is_byok") is True:
        upstream = (usage.get("cost_details") or {}).get("upstream_inference_cost")
        if isinstance(upstream, int | float):
            cost = upstream
    amount: Decimal | None = None
    if isinstance(cost, int | float) and not isinstance(cost, bool):
        try:
            amount = Decimal(repr(cost))
        except InvalidOperation:
            amount = None
    return Usage(
        prompt_tokens=_int(usage.get("prompt_tokens")),
        completion_tokens=_int(usage.get("completion_tokens")),
        reasoning_tokens=_int(
            completion_details.get("reasoning_tokens") if isinstance(completion_details, dict) else None
        ),
        cached_tokens=_int(prompt_details.get("cached_tokens") if isinstance(prompt_details, dict) else None),
        cost=amount,
    )


def _message(error: Any, fallback: str) -> str:
    if isinstance(error, dict):
        message = error.get("message")
        if isinstance(message, str) and message:
            raw = (
                (error.get("metadata") or {}).get("raw") if isinstance(error.get("metadata"), dict) else None
            )
            if isinstance(raw, str) and raw and raw not in message:
                message = f"{message} ({raw})"
            return message[:ERROR_MESSAGE_MAX_CHARS]
    return fallback[:ERROR_MESSAGE_MAX_CHARS]


def _code(error: Any, status: int | None) -> str:
    code = error.get("code") if isinstance(error, dict) else None
    if code is None:
        return f"http_{status}" if status is not None else "error"
    return str(code)


def _rate_limit_reset(headers: httpx.Headers | None, error: Any) -> datetime | None:
    """X-RateLimit-Reset (ms since the epoch) from the headers or from error.metadata.headers."""
    values: list[Any] = []
    if headers is not None:
        values.append(headers.get("x-ratelimit-reset"))
    if isinstance(error, dict) and isinstance(error.get("metadata"), dict):
        inner = error["metadata"].get("headers")
        if isinstance(inner, dict):
            values.extend(v for k, v in inner.items() if k.lower() == "x-ratelimit-reset")
    for value in values:
        try:
            ms = float(value)
        except (TypeError, ValueError):
            continue
        return datetime.fromtimestamp(ms / 1000, UTC)
    return None


def _retry_after(headers: httpx.Headers | None) -> float | None:
    if headers is None or "retry-after" not in headers:
        return None
    try:
        return max(0.0, float(headers["retry-after"]))
    except ValueError:
        return None


def _by_status(status: int, error: Any, headers: httpx.Headers | None, text: str) -> Failure:
    code = _code(error, status)
    message = _message(error, text or f"HTTP {status}")
    if status == 400:
        return Failure(Outcome.FAIL, code, message, status)
    if status == 401:
        return Failure(
            Outcome.PARK,
            code,
            f"OpenRouter rejected the API key (401: {message}). Check OPENROUTER_API_KEY, then `orbatch resume`.",
            status,
            park_reason=PauseReason.AUTH,
        )
    if status == 402:
        retry_after = _retry_after(headers)
        if retry_after is not None or "in_flight" in code or "in-flight" in message.lower():
            return Failure(
                Outcome.RETRY, code, message, status, retry_after=retry_after, spends_attempt=False
            )
        return Failure(
            Outcome.PARK,
            code,
            f"OpenRouter reports insufficient credits (402: {message}). Add credits at "
            "https://openrouter.ai/settings/credits, then run `orbatch resume BATCH`.",
            status,
            park_reason=PauseReason.CREDITS,
        )
    if status == 403:
        if "limit" in message.lower():
            return Failure(
                Outcome.PARK,
                code,
                f"The API key's spending limit is reached (403: {message}). Raise it, then `orbatch resume BATCH`.",
                status,
                park_reason=PauseReason.CREDITS,
            )
        return Failure(Outcome.FAIL, code, message, status)
    if status == 404:
        return Failure(Outcome.FALLBACK, code, message, status)
    if status == 429:
        reset = _rate_limit_reset(headers, error)
        metadata = error.get("metadata") if isinstance(error, dict) else None
        provider = metadata.get("provider_name") if isinstance(metadata, dict) else None
        if provider:
            # The upstream provider's own limit, not the account's: move on or back off this request only.
            return Failure(
                Outcome.FALLBACK, code, f"{message} (provider {provider})", status, provider=str(provider)
            )
        if "per-day" in message:
            resume_at = reset or next_utc_midnight()
            return Failure(
                Outcome.PARK,
                code,
                f"OpenRouter's daily free-model quota is spent ({message.strip()}).",
                status,
                park_reason=PauseReason.QUOTA,
                resume_at=resume_at,
                cooldown_until=resume_at,
            )
        wait = None if reset is None else max(0.0, (reset - datetime.now(UTC)).total_seconds())
        return Failure(
            Outcome.RETRY, code, message, status, retry_after=wait, spends_attempt=False, cooldown_until=reset
        )
    # A 5xx naming a provider is that provider's failure; one naming none may be OpenRouter's own.
    named = (
        isinstance(error, dict)
        and isinstance(error.get("metadata"), dict)
        and error["metadata"].get("provider_name")
    )
    verdict: Verdict = "fail" if status >= 500 and not named else "none"
    if status in (502, 503):
        return Failure(Outcome.FALLBACK, code, message, status, verdict=verdict)
    if status >= 500 or status == 408:
        return Failure(
            Outcome.RETRY, code, message, status, retry_after=_retry_after(headers), verdict=verdict
        )
    return Failure(Outcome.FAIL, code, message, status)


def _transport_failure(error: Exception) -> Failure:
    """A call that got no HTTP answer: the upstream unreachable (the breaker's business), or cut short."""
    detail = redact(str(error) or type(error).__name__)
    if isinstance(error, CallDeadline):
        # Slow, not absent: a failed attempt like any timeout, one of a possible run for the breaker.
        return Failure(
            Outcome.RETRY, "timeout", f"timeout: {detail}"[:ERROR_MESSAGE_MAX_CHARS], verdict="fail"
        )
    if isinstance(error, httpx.ConnectTimeout):
        return Failure(Outcome.RETRY, "connect_timeout", f"connect timeout: {detail}", verdict="down")
    if isinstance(error, httpx.ConnectError):
        # Refused, reset while connecting, DNS, TLS: OpenRouter cannot be reached at all.
        return Failure(
            Outcome.RETRY,
            "connection_error",
            f"connection error: {detail}"[:ERROR_MESSAGE_MAX_CHARS],
            verdict="down",
        )
    kind = "timeout" if isinstance(error, httpx.TimeoutException) else "connection_error"
    return Failure(
        Outcome.RETRY, kind, f"{kind.replace('_', ' ')}: {detail}"[:ERROR_MESSAGE_MAX_CHARS], verdict="fail"
    )


def _usage_of_tail(tail: bytes) -> Usage:
    """The usage object at the end of an answer too large to keep (OpenRouter writes `usage` last)."""
    text = tail.decode("utf-8", "replace")
    at = text.rfind('"usage"')
    start = text.find("{", at) if at >= 0 else -1
    if start < 0:
        return Usage()
    try:
        usage, _ = json.JSONDecoder().raw_decode(text, start)
    except ValueError:
        return Usage()
    return usage_of({"usage": usage})


def _too_large(call: CallResult) -> Failure:
    head = call.raw.decode("utf-8", "replace")
    generation = re.search(r'"id"\s*:\s*"([^"]{1,200})"', head)
    model = re.search(r'"model"\s*:\s*"([^"]{1,200})"', head)
    return Failure(
        Outcome.FAIL,
        "response_too_large",
        f"the answer was {call.too_large} bytes, over ORBATCH_MAX_RESPONSE_BYTES: it was not stored "
        "(its usage and cost were)",
        call.status,
        generation_id=generation.group(1) if generation else None,
        model=model.group(1) if model else None,
        usage=_usage_of_tail(call.tail),
    )


def _embeddings(call: CallResult, body: dict[str, Any], request: dict[str, Any]) -> Success | Failure:
    """A 200 to an embeddings request: one vector per input, in input order (by `index` when given)."""
    model = body.get("model") if isinstance(body.get("model"), str) else None
    provider = body.get("provider") if isinstance(body.get("provider"), str) else None
    generation_id = body.get("id") if isinstance(body.get("id"), str) else None
    usage = usage_of(body)
    data = body.get("data")
    wanted = embedding_inputs(request)
    vectors: list[Any] = []
    if isinstance(data, list) and all(isinstance(d, dict) and "embedding" in d for d in data):
        indexed = [d.get("index", i) for i, d in enumerate(data)]
        if sorted(indexed) == list(range(len(data))):
            vectors = [d["embedding"] for _, d in sorted(zip(indexed, data, strict=True), key=lambda p: p[0])]
    if len(vectors) != wanted:
        return Failure(
            Outcome.RETRY,
            "invalid_embeddings",
            f"HTTP 200 with {len(vectors) if vectors else 'no usable'} embeddings for {wanted} input"
            f"{'s' if wanted != 1 else ''}",
            200,
            model=model,
            provider=provider,
            generation_id=generation_id,
            usage=usage,
        )
    # The vectors are read from the stored answer when asked for: not stored a second time as its content.
    return Success(200, call.raw, model, provider, generation_id, None, None, usage)


def classify(call: CallResult, request: dict[str, Any] | None = None) -> Success | Failure:
    """The class of one call's result (see the table above); `request` is the body sent (its endpoint's
    answer is read: an embeddings request's vectors)."""
    if call.transport_error is not None:
        return _transport_failure(call.transport_error)
    assert call.status is not None
    if call.too_large is not None:
        return _too_large(call)
    text = call.raw[:ERROR_MESSAGE_MAX_CHARS].decode("utf-8", "replace")
    try:
        body = orjson.loads(call.raw)
    except orjson.JSONDecodeError:
        if call.status >= 400 and call.status not in (408, 429) and call.status < 500:
            return _by_status(call.status, None, call.headers, text)
        return Failure(
            Outcome.RETRY,
            "invalid_json",
            f"HTTP {call.status} with a body that is not JSON: {text[:200]}",
            call.status,
            verdict="fail" if call.status >= 500 else "none",
        )
    if not isinstance(body, dict):
        return Failure(
            Outcome.RETRY,
            "invalid_json",
            f"HTTP {call.status} with a JSON body that is not an object",
            call.status,
        )
    if call.status != 200:
        return _by_status(call.status, body.get("error"), call.headers, text)
    if request is not None and endpoint_of(request) == EMBEDDINGS_URL and body.get("error") is None:
        return _embeddings(call, body, request)
    choices = body.get("choices")
    model = body.get("model") if isinstance(body.get("model"), str) else None
    provider = body.get("provider") if isinstance(body.get("provider"), str) else None
    generation_id = body.get("id") if isinstance(body.get("id"), str) else None
    usage = usage_of(body)
    if not isinstance(choices, list) or not choices:
        error = body.get("error")
        if error is None:
            return Failure(
                Outcome.RETRY, "no_choices", "HTTP 200 with no choices and no error", 200, usage=usage
            )
        code = error.get("code") if isinstance(error, dict) else None
        as_status = int(code) if isinstance(code, int) or (isinstance(code, str) and code.isdigit()) else 500
        failure = _by_status(as_status, error, call.headers, text)
        failure.status = 200
        failure.usage = usage
        return failure
    first = choices[0] if isinstance(choices[0], dict) else {}
    finish_reason = first.get("finish_reason")
    if first.get("error") is not None or finish_reason == "error":
        error = first.get("error")
        failure = Failure(
            Outcome.RETRY,
            _code(error, 200),
            _message(error, "the provider returned an error inside HTTP 200"),
            200,
        )
        failure.model, failure.provider, failure.generation_id, failure.usage = (
            model,
            provider,
            generation_id,
            usage,
        )
        return failure
    message = first.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    return Success(
        status=200,
        raw=call.raw,
        model=model,
        provider=provider,
        generation_id=generation_id,
        content=content if isinstance(content, str) else None,
        finish_reason=finish_reason if isinstance(finish_reason, str) else None,
        usage=usage,
    )
