"""An OpenRouter simulator on loopback HTTP: free-tier limits, `models` fallback, errors and usage as the real one.

The test suite runs against it, `orbatch simulator` serves it for a user without a key, and `orbatch run
--simulator` serves it inside the run. Behaviour is set at start (`simulator_command`'s options, or
`config_from_args` for ORBATCH_SIMULATOR_ARGS) or while it runs through `POST /_sim/config` with any `SimConfig`
field; `GET /_sim/calls` shows what it received (bodies, never the key) and `GET /_sim/stats` counts calls by
status and outcome.

**Catalogue.** `GET /models` lists OpenRouter's own model list as saved on 2026-08-18 (`CATALOG_FILE` beside
this module: ids, names, context lengths, architecture, prices, top provider, supported parameters), then a few
models orbatch's examples name that OpenRouter has withdrawn since (kept from the last saved list that had them,
so the examples run offline), then the `sim/*` models the tests use. Any listed id is accepted and billed at its
listed prices: prompt and completion USD per token, plus the request price where one is listed. `POST
/_sim/config {"models": [{"id", "prompt", "completion", "request"?}, ...]}` replaces the list (full `/models`
entries with `pricing` work too); `{"reset": true}` restores it.

**Time.** `speed` scales the free tier's clock as a whole: at 10 the per-minute window lasts 6 s and a day
8,640 s. `free_window_seconds` and `day_seconds` override either. Simulated day N runs from N * day_seconds to
(N + 1) * day_seconds in epoch seconds, so at speed 1 days are UTC days, and a 429 for the daily limit carries
the end of the simulated day in `X-RateLimit-Reset`.

**`GET /key`** answers OpenRouter's fields (`is_free_tier`, `limit`, `usage`...) plus a simulator-only object,
`data.simulator`: `{"free_per_minute", "free_window_seconds", "free_per_day", "day_seconds", "day_started_at",
"speed"}`; `day_started_at` is the epoch second the current simulated day began, so a client takes the day's
number as round(day_started_at / day_seconds) and its reset as day_started_at + day_seconds.

**Rules** (`POST /_sim/config {"rules": [...]}`) script the answer to requests whose last user message contains
`match`, `times` times (-1: always), after `delay` seconds: `status` (an error answer: `status`, `code`,
`message`, `headers`, `metadata`, `reset_in_seconds` for a 429), `error_in_200`, `top_level_error`, `not_json`,
`reply` (a 200 with `content`), `hang` (nothing for `seconds`, default an hour, then a 504), `reset` (a TCP RST),
`trickle` (a 200 with its headers at once, then a keep-alive every `interval` seconds, default 0.3: a space, as
gateways send before a JSON body, or with `sse: true` an `: OPENROUTER PROCESSING` comment as OpenRouter sends
on streams; for `seconds`, default forever, then the completion) and `big` (a 200 whose body, a valid
completion, is `size` bytes).

**Outage.** `outage_status: 503` makes every call fail with that status until it is set back to null. Without
`outage_provider_name` it is OpenRouter itself that is down: `/chat/completions`, `/models` and `/key` all answer
it, with no provider named. With `outage_provider_name: "X"` the providers behind it are: OpenRouter checks the
call as usual (key, models, free-tier limits) and answers the error with `error.metadata.provider_name = "X"`.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import hashlib
import random
import socket
import struct
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from importlib.resources import files
from typing import Any

import orjson
from aiohttp import web

from jobs.core.constants import SIMULATOR_HEADER
from jobs.formats.structured import requested_schema
from jobs.simulator.config import DAY_SECONDS, MINUTE_SECONDS, Rule, SimConfig, simulator_main

__all__ = [
    "API_PREFIX",
    "CATALOG_FILE",
    "SIM_MODELS",
    "Simulator",
    "default_models",
    "openrouter_snapshot",
    "serve",
    "serve_forever",
    "served_models",
]

API_PREFIX = "/api/v1"

# OpenRouter's GET /models as saved on the date in its name; the file says where it came from.
CATALOG_FILE = "openrouter_models_2026-08-18.json"

# The tests' own models, never in OpenRouter's list: id -> (prompt, completion) USD per token.
SIM_MODELS: dict[str, tuple[str, str]] = {
    "sim/echo": ("0.000001", "0.000002"),
    "sim/echo:free": ("0", "0"),
    "sim/backup": ("0.000002", "0.000004"),
    "sim/backup:free": ("0", "0"),
    "sim/spare": ("0.000003", "0.000006"),
    "sim/last-resort": ("0.000004", "0.000008"),
}

# When the request being answered arrived (each aiohttp request runs in its own task and context).
_arrived: contextvars.ContextVar[float] = contextvars.ContextVar("arrived")
# The reset the request arrived after: a call still running when the counters are reset (a test's lingering call,
# answered during the next test) is not counted in the new ones.
_arrival_epoch: contextvars.ContextVar[int] = contextvars.ContextVar("arrival_epoch", default=-1)


@functools.cache
def _snapshot() -> dict[str, Any]:
    snapshot: dict[str, Any] = orjson.loads(files("jobs.simulator").joinpath(CATALOG_FILE).read_bytes())
    return snapshot


def _listing_entry(model_id: str, prompt: str, completion: str, request: str | None = None) -> dict[str, Any]:
    """A `/models` entry for a model given only by its prices (the tests' models)."""
    pricing = {"prompt": prompt, "completion": completion}
    if request is not None:
        pricing["request"] = request
    return {
        "id": model_id,
        "canonical_slug": model_id,
        "name": model_id,
        "created": 1735689600,
        "context_length": 131072,
        "architecture": {
            "modality": "text->text",
            "input_modalities": ["text"],
            "output_modalities": ["text"],
            "tokenizer": "Other",
            "instruct_type": None,
        },
        "pricing": pricing,
        "top_provider": {"context_length": 131072, "max_completion_tokens": 8192, "is_moderated": False},
        "supported_parameters": ["max_tokens", "temperature", "top_p", "stop", "seed", "response_format"],
    }


def default_models() -> list[dict[str, Any]]:
    """The catalogue served by default: OpenRouter's list, the withdrawn models the examples name, `sim/*`."""
    snapshot = _snapshot()
    return [
        *snapshot["data"],
        *(entry["model"] for entry in snapshot["withdrawn"]),
        *(_listing_entry(model_id, *prices) for model_id, prices in SIM_MODELS.items()),
    ]


def openrouter_snapshot() -> tuple[str, list[dict[str, Any]]]:
    """The day OpenRouter's list was saved and that list as shipped (no withdrawn model, no `sim/*`)."""
    snapshot = _snapshot()
    return str(snapshot["snapshot"]), list(snapshot["data"])


def served_models() -> list[dict[str, Any]]:
    """`GET /models`'s `data` as a simulator answers it before any reconfiguration, with no simulator running."""
    return [_served(entry) for entry in Simulator().models.values()]


def _usd(value: Any) -> Decimal:
    # "-1" marks a price OpenRouter cannot know in advance (its routers); the simulator charges nothing for it.
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return Decimal(0)
    return amount if amount.is_finite() and amount > 0 else Decimal(0)


def _served(entry: Mapping[str, Any]) -> dict[str, Any]:
    # Fields the published schema requires that the saved list was trimmed of; they hold nothing for text models.
    slug = entry.get("canonical_slug") or entry["id"]
    return {
        "per_request_limits": None,
        "default_parameters": None,
        "supported_voices": None,
        **entry,
        "links": {"details": f"{API_PREFIX}/models/{slug}/endpoints"},
    }


class Simulator:
    """The simulator's state and its HTTP handlers."""

    def __init__(
        self, config: SimConfig | None = None, models: Iterable[Mapping[str, Any]] | None = None
    ) -> None:
        self.config = config or SimConfig()
        self.initial_models = [dict(m) for m in (default_models() if models is None else models)]
        self._set_models(self.initial_models)
        self.started = time.time()
        # Who this simulator is: a new one (or one reset) is a new account whose counts start from nothing,
        # which a worker tells from this id, sent on every answer (401s included) and in GET /key.
        self.instance = uuid.uuid4().hex[:12]
        self.epoch = 0
        self.reset_counters()

    def reset_counters(self) -> None:
        """Forget the calls and the free-tier counters."""
        self.minute_window: collections.deque[float] = collections.deque()
        self.day_count = 0
        self.day_index = self._day_index(time.time())
        self.calls: list[dict[str, Any]] = []
        self.stats: collections.Counter[str] = collections.Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        # Calls still running at a reset (a killed worker's hang) must not count against the next test's.
        self.epoch += 1
        self.generation = 0
        self.spent = Decimal(0)
        # When its free-tier counts began: no call before this moment counts against its quota.
        self.counting_since = time.time()

    def _set_models(self, entries: Iterable[Mapping[str, Any]]) -> None:
        self.models = {str(e["id"]): dict(e) for e in entries}
        self.prices = {
            model_id: tuple(_usd(e.get("pricing", {}).get(k)) for k in ("prompt", "completion", "request"))
            for model_id, e in self.models.items()
        }
        served = [_served(e) for e in self.models.values()]
        # Serialised once: the list is asked for at every submit and changes only through configure.
        self._models_body = orjson.dumps(
            {"data": served, "total_count": len(served), "links": {"next": None}}
        )

    # --- configuration -------------------------------------------------------------------------------
    def configure(self, data: dict[str, Any]) -> None:
        """Apply a partial configuration (the body of POST /_sim/config); `reset` also restores the models."""
        if data.get("reset"):
            self.reset_counters()
            self._set_models(self.initial_models)
        if "speed" in data:
            speed = float(data["speed"])
            if speed <= 0:
                raise ValueError("speed must be above 0")
            # The speed scales the minute and the day together; either given in the same body wins.
            self.config.free_window_seconds = MINUTE_SECONDS / speed
            self.config.day_seconds = None if speed == 1 else DAY_SECONDS / speed
        for key, value in data.items():
            if key == "rules":
                self.config.rules = [Rule.from_json(r) for r in value]
            elif key == "models":
                self._set_models(
                    m
                    if "pricing" in m
                    else _listing_entry(
                        m["id"],
                        str(m["prompt"]),
                        str(m["completion"]),
                        None if m.get("request") is None else str(m["request"]),
                    )
                    for m in value
                )
            elif key != "reset":
                if not hasattr(self.config, key):
                    raise ValueError(f"unknown setting {key!r}")
                setattr(self.config, key, value)

    # --- free-tier limits ------------------------------------------------------------------------------
    def _day_seconds(self) -> float:
        return self.config.day_seconds or DAY_SECONDS

    def _day_index(self, now: float) -> int:
        return int(now // self._day_seconds())

    def _day_reset_ms(self, now: float) -> int:
        return int((self._day_index(now) + 1) * self._day_seconds() * 1000)

    def _free_limit(self, now: float) -> web.Response | None:
        """None when a free request may go through (and counts it), else the 429 OpenRouter sends."""
        cfg = self.config
        day = self._day_index(now)
        if day != self.day_index:
            self.day_index, self.day_count = day, 0
        window = self.minute_window
        while window and window[0] <= now - cfg.free_window_seconds:
            window.popleft()
        if self.day_count >= cfg.free_per_day:
            limit_name = "free-models-per-day" if cfg.is_free_tier else "free-models-per-day-high-balance"
            extra = " Add 10 credits to unlock 1000 free model requests per day" if cfg.is_free_tier else ""
            return self._rate_limited(limit_name, cfg.free_per_day, self._day_reset_ms(now), extra)
        if len(window) >= cfg.free_per_minute:
            # Failed attempts count against the day, as OpenRouter documents.
            self.day_count += 1
            reset_ms = int((window[0] + cfg.free_window_seconds) * 1000)
            return self._rate_limited("free-models-per-min", cfg.free_per_minute, reset_ms, "")
        window.append(now)
        self.day_count += 1
        return None

    def _rate_limited(self, name: str, limit: int, reset_ms: int, extra: str) -> web.Response:
        headers = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(reset_ms),
        }
        body = {
            "error": {
                "code": 429,
                "message": f"Rate limit exceeded: {name}. {extra}".rstrip() + " ",
                "metadata": {"headers": headers, "provider_name": None},
            },
            "user_id": "user_sim",
        }
        self.stats[f"429:{name}"] += 1
        return web.Response(
            status=429, body=orjson.dumps(body), headers=headers, content_type="application/json"
        )

    def limits(self, now: float) -> dict[str, Any]:
        """The free tier as it is enforced now: `GET /key`'s `data.simulator`."""
        cfg = self.config
        return {
            "free_per_minute": cfg.free_per_minute,
            "free_window_seconds": cfg.free_window_seconds,
            "free_per_day": cfg.free_per_day,
            "day_seconds": self._day_seconds(),
            "day_started_at": self._day_index(now) * self._day_seconds(),
            "speed": cfg.speed,
            "instance": self.instance,
            "counting_since": self.counting_since,
        }

    # --- helpers ---------------------------------------------------------------------------------------
    @staticmethod
    def _error(
        status: int,
        message: str,
        code: Any = None,
        metadata: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        error: dict[str, Any] = {"code": status if code is None else code, "message": message}
        if metadata is not None:
            error["metadata"] = metadata
        return web.Response(
            status=status,
            body=orjson.dumps({"error": error, "user_id": "user_sim"}),
            headers=headers,
            content_type="application/json",
        )

    def _openrouter_down(self) -> web.Response | None:
        """The answer of an OpenRouter that is down as a whole, or None."""
        cfg = self.config
        if cfg.outage_status is None or cfg.outage_provider_name is not None:
            return None
        return self._error(cfg.outage_status, "simulated outage: OpenRouter is unavailable")

    @staticmethod
    def _last_user_text(messages: list[Any]) -> str:
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, str):
                    return content
                if isinstance(content, list):
                    return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        return ""

    def _usage(self, model: str, prompt_text: str, content: str) -> dict[str, Any]:
        prompt_tokens = max(1, len(prompt_text) // 4)
        completion_tokens = max(1, len(content) // 4)
        prompt_price, completion_price, request_price = self.prices[model]
        prompt_cost = prompt_price * prompt_tokens
        completion_cost = completion_price * completion_tokens
        cost = prompt_cost + completion_cost + request_price
        self.spent += cost
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "cost": float(cost),
            "is_byok": False,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "image_tokens": 0},
            "cost_details": {
                "upstream_inference_cost": None,
                "upstream_inference_prompt_cost": float(prompt_cost),
                "upstream_inference_completions_cost": float(completion_cost),
            },
        }
        if self.config.byok:
            # OpenRouter's BYOK fee is 5 % of what the provider charges the user's own key.
            usage["is_byok"] = True
            usage["cost"] = float(cost * Decimal("0.05"))
            usage["cost_details"]["upstream_inference_cost"] = float(cost)
        if self.config.omit_cost:
            del usage["cost"]
        return usage

    def _completion(
        self,
        model: str,
        prompt_text: str,
        content: str,
        finish: str = "stop",
        choice_error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        self.generation += 1
        choice: dict[str, Any] = {
            "index": 0,
            "logprobs": None,
            "finish_reason": finish,
            "native_finish_reason": finish,
            "message": {"role": "assistant", "content": content, "refusal": None, "reasoning": None},
        }
        if choice_error is not None:
            choice["error"] = choice_error
        return {
            "id": f"gen-{int(time.time())}-{self.generation:08d}",
            "provider": "SimProvider",
            "model": model,
            "object": "chat.completion",
            "created": int(time.time()),
            "system_fingerprint": None,
            "choices": [choice],
            "usage": self._usage(model, prompt_text, content),
        }

    def _record(self, body: Any, status: int, outcome: str, model: str | None = None) -> None:
        if _arrival_epoch.get() not in (-1, self.epoch):
            return
        self.stats["calls"] += 1
        self.stats[f"status:{status}"] += 1
        self.stats[f"outcome:{outcome}"] += 1
        if self.config.record_calls:
            self.calls.append(
                {
                    "t": _arrived.get(time.time()),
                    "done": time.time(),
                    "body": body,
                    "status": status,
                    "outcome": outcome,
                    "model": model,
                }
            )

    # --- handlers --------------------------------------------------------------------------------------
    async def chat(self, request: web.Request) -> web.StreamResponse:
        _arrived.set(time.time())
        epoch = self.epoch
        _arrival_epoch.set(epoch)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._chat(request)
        finally:
            if self.epoch == epoch:
                self.in_flight -= 1

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        cfg = self.config
        down = self._openrouter_down()
        if down is not None:
            try:
                sent = orjson.loads(await request.read())
            except orjson.JSONDecodeError:
                sent = None
            self._record(sent, down.status, "outage")
            return down
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            self._record(None, 401, "no_key")
            return self._error(401, "No auth credentials found")
        if cfg.valid_keys is not None and auth[7:] not in cfg.valid_keys:
            self._record(None, 401, "bad_key")
            return self._error(401, "User not found.")
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self._record(None, 400, "bad_json")
            return self._error(400, "Invalid JSON in request body")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
            self._record(body, 400, "no_messages")
            return self._error(400, 'Input required: specify "messages"')
        models = body.get("models")
        if models is not None and (not isinstance(models, list) or len(models) > 3):
            self._record(body, 400, "too_many_models")
            return self._error(400, "'models' array must have 3 items or fewer.")
        candidates: list[str] = (
            list(models) if models else ([body["model"]] if isinstance(body.get("model"), str) else [])
        )
        if not candidates:
            self._record(body, 400, "no_model")
            return self._error(400, "No models provided")
        for model in candidates:
            if model not in self.models:
                self._record(body, 400, "unknown_model")
                return self._error(400, f"{model} is not a valid model ID", code=400)
        if cfg.credits is not None and cfg.credits <= 0:
            self._record(body, 402, "no_credits")
            return self._error(402, "Insufficient credits. Add more using https://openrouter.ai/credits")
        now = time.time()
        if candidates[0].endswith(":free"):
            limited = self._free_limit(now)
            if limited is not None:
                self._record(body, 429, "rate_limited")
                return limited
        if cfg.outage_status is not None and cfg.outage_provider_name is not None:
            self._record(body, cfg.outage_status, "outage")
            return self._error(
                cfg.outage_status,
                "Provider returned error",
                metadata={"provider_name": cfg.outage_provider_name, "raw": "simulated outage"},
            )
        text = self._last_user_text(body["messages"])
        if cfg.latency_ms:
            await asyncio.sleep(cfg.latency_ms / 1000)
        draw = random.random()
        if draw < cfg.chaos_500:
            rule: Rule | None = Rule(match="", kind="status", status=500, message="chaos: internal error")
        elif draw < cfg.chaos_500 + cfg.chaos_error_in_200:
            rule = Rule(match="", kind="error_in_200", message="chaos: provider failed mid-answer")
        elif draw < cfg.chaos_500 + cfg.chaos_error_in_200 + cfg.chaos_hang:
            rule = Rule(match="", kind="hang", seconds=cfg.chaos_hang_seconds)
        else:
            rule = next((r for r in cfg.rules if r.match in text and r.times != 0), None)
        if rule is not None:
            if rule.times > 0:
                rule.times -= 1
            if rule.delay > 0:
                await asyncio.sleep(rule.delay)
            return await self._apply(rule, request, body, candidates, text)
        for model in candidates:
            if model in cfg.down_models:
                continue
            content = _structured_reply(body, text) or f"echo: {text}"
            self._record(body, 200, "ok", model)
            return _json(self._completion(model, text, content))
        self._record(body, 503, "all_down")
        return self._error(
            503,
            f"{candidates[-1]} is temporarily unavailable",
            metadata={"provider_name": "SimProvider", "raw": "upstream down"},
        )

    async def _apply(
        self, rule: Rule, request: web.Request, body: dict[str, Any], candidates: list[str], text: str
    ) -> web.StreamResponse:
        model = candidates[0]
        if rule.kind == "reply":
            self._record(body, 200, "ok", model)
            return _json(self._completion(model, text, rule.content or ""))
        if rule.kind == "status":
            self._record(body, rule.status, "rule")
            headers, metadata = dict(rule.headers), rule.metadata
            if rule.reset_in_seconds is not None:
                headers.update(
                    {
                        "X-RateLimit-Limit": "20",
                        "X-RateLimit-Remaining": "0",
                        "X-RateLimit-Reset": str(int((time.time() + rule.reset_in_seconds) * 1000)),
                    }
                )
                metadata = {**(metadata or {}), "headers": headers, "provider_name": None}
            return self._error(
                rule.status, rule.message or f"simulated HTTP {rule.status}", rule.code, metadata, headers
            )
        if rule.kind == "error_in_200":
            self._record(body, 200, "error_in_200", model)
            error = {"code": rule.code or 502, "message": rule.message or "Provider returned error"}
            return _json(self._completion(model, text, "", finish="error", choice_error=error))
        if rule.kind == "top_level_error":
            self._record(body, 200, "top_level_error")
            error = {"code": rule.code or 502, "message": rule.message or "Provider returned error"}
            return _json({"error": error, "user_id": "user_sim"})
        if rule.kind == "not_json":
            self._record(body, rule.status, "not_json")
            return web.Response(
                status=rule.status, text="<html><body>502 Bad Gateway</body></html>", content_type="text/html"
            )
        if rule.kind == "hang":
            self._record(body, 0, "hang")
            await asyncio.sleep(3600.0 if rule.seconds is None else rule.seconds)
            return self._error(504, "simulated hang ended")
        if rule.kind == "trickle":
            self._record(body, 200, "trickle", model)
            return await self._trickle(rule, request, model, text)
        if rule.kind == "big":
            self._record(body, 200, "big", model)
            return web.Response(body=self._big_body(rule.size, model, text), content_type="application/json")
        # reset: drop the connection with a RST, as a crashed proxy does
        self._record(body, 0, "reset")
        _reset(request)
        raise asyncio.CancelledError

    async def _trickle(self, rule: Rule, request: web.Request, model: str, text: str) -> web.StreamResponse:
        """Headers now, a keep-alive byte every `interval` for `seconds` (or for ever), then the completion."""
        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream" if rule.sse else "application/json",
                "Cache-Control": "no-cache",
            },
        )
        await response.prepare(request)
        keep_alive = b": OPENROUTER PROCESSING\n\n" if rule.sse else b" "
        deadline = None if rule.seconds is None else time.monotonic() + rule.seconds
        try:
            while deadline is None or time.monotonic() < deadline:
                await response.write(keep_alive)
                left = rule.interval if deadline is None else deadline - time.monotonic()
                await asyncio.sleep(max(0.0, min(rule.interval, left)))
            content = rule.content if rule.content is not None else f"echo: {text}"
            completion = self._completion(model, text, content)
            if rule.sse:
                # The whole answer as one chunk, as a stream's last chunk carries the usage.
                choice = completion["choices"][0]
                choice["delta"] = choice.pop("message")
                completion["object"] = "chat.completion.chunk"
                await response.write(b"data: " + orjson.dumps(completion) + b"\n\ndata: [DONE]\n\n")
            else:
                await response.write(orjson.dumps(completion))
            await response.write_eof()
        except ConnectionError:
            pass  # the client gave up: there is no one left to answer
        return response

    def _big_body(self, size: int, model: str, text: str) -> bytes:
        """A completion of exactly `size` bytes (at least its fields' own size), its content padded."""
        completion = self._completion(model, text, "x" * size)
        overhead = len(orjson.dumps(completion)) - size
        completion["choices"][0]["message"]["content"] = "x" * max(0, size - overhead)
        return orjson.dumps(completion)

    async def list_models(self, _: web.Request) -> web.Response:
        down = self._openrouter_down()
        if down is not None:
            return down
        return web.Response(body=self._models_body, content_type="application/json")

    async def key(self, request: web.Request) -> web.Response:
        down = self._openrouter_down()
        if down is not None:
            return down
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return self._error(401, "No auth credentials found")
        cfg = self.config
        usage = float(self.spent)
        data = {
            "label": "sk-or-v1-sim...",
            "limit": cfg.credits,
            "limit_remaining": None if cfg.credits is None else cfg.credits - usage,
            "limit_reset": None,
            "include_byok_in_limit": False,
            "usage": usage,
            "usage_daily": usage,
            "usage_weekly": usage,
            "usage_monthly": usage,
            "byok_usage": 0,
            "byok_usage_daily": 0,
            "byok_usage_weekly": 0,
            "byok_usage_monthly": 0,
            "is_free_tier": cfg.is_free_tier,
            "is_management_key": False,
            "is_provisioning_key": False,
            "rate_limit": {
                "requests": -1,
                "interval": "10s",
                "note": "This field is deprecated and safe to ignore.",
            },
            "expires_at": None,
            "creator_user_id": "user_sim",
        }
        if cfg.identify:
            # Not OpenRouter's: the limits this simulator enforces, so a worker can take them as from a real key.
            data["simulator"] = self.limits(time.time())
        return _json({"data": data})

    async def set_config(self, request: web.Request) -> web.Response:
        try:
            self.configure(await request.json(loads=orjson.loads))
        except (ValueError, TypeError, KeyError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"ok": True})

    async def get_calls(self, _: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.calls), content_type="application/json")

    async def get_stats(self, _: web.Request) -> web.Response:
        stats = dict(self.stats)
        stats.update(max_in_flight=self.max_in_flight, in_flight=self.in_flight, day_count=self.day_count)
        return web.json_response(stats)

    async def _say_who(self, _: web.Request, response: web.StreamResponse) -> None:
        # Every answer says it comes from a simulator, so a client knows without a key (GET /key needs one).
        if self.config.identify:
            response.headers[SIMULATOR_HEADER] = self.instance

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.on_response_prepare.append(self._say_who)
        app.router.add_post(f"{API_PREFIX}/chat/completions", self.chat)
        app.router.add_get(f"{API_PREFIX}/models", self.list_models)
        app.router.add_get(f"{API_PREFIX}/key", self.key)
        app.router.add_post("/_sim/config", self.set_config)
        app.router.add_get("/_sim/calls", self.get_calls)
        app.router.add_get("/_sim/stats", self.get_stats)
        return app


def _json(value: Any) -> web.Response:
    return web.Response(body=orjson.dumps(value), content_type="application/json")


def _reset(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()


def _fake_instance(schema: Any, text: str, depth: int = 0) -> Any:
    """A value that follows a (simple) JSON schema, chosen from the prompt so that answers vary by record."""
    if not isinstance(schema, dict) or depth > 8:
        return None
    seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][seed % len(schema["enum"])]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return _fake_instance(schema[key][0], text, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        props: dict[str, Any] = schema["properties"] if isinstance(schema.get("properties"), dict) else {}
        return {name: _fake_instance(sub, f"{name}:{text}", depth + 1) for name, sub in props.items()}
    if kind == "array":
        return [_fake_instance(schema.get("items", {}), text, depth + 1)] * max(
            1, int(schema.get("minItems", 1))
        )
    if kind == "integer":
        return int(schema.get("minimum", 0)) + seed % 5
    if kind == "number":
        return float(schema.get("minimum", 0)) + (seed % 100) / 100
    if kind == "boolean":
        return bool(seed % 2)
    if kind == "null":
        return None
    words = " ".join(text.split()[:12])
    return f"echo: {words}"[: int(schema.get("maxLength", 200))]


def _structured_reply(body: dict[str, Any], text: str) -> str | None:
    """The reply to a request for structured output: JSON following its schema, as a model would send."""
    schema = requested_schema(body)
    return None if schema is None else orjson.dumps(_fake_instance(schema, text)).decode()


async def serve(simulator: Simulator, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start serving; returns the runner and the port bound (useful with port 0)."""
    # A simulated call still open when the simulator stops (a run interrupted twice) is not waited for: it
    # answers no one and costs nothing.
    runner = web.AppRunner(simulator.app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    server = site._server
    bound = server.sockets[0].getsockname()[1] if server is not None and server.sockets else port  # type: ignore[attr-defined]
    return runner, int(bound)


async def serve_forever(config: SimConfig, host: str, port: int) -> None:
    """Serve a simulator with this configuration until cancelled; its address is stdout's first line."""
    simulator = Simulator(config)
    runner, bound = await serve(simulator, host, port)
    # Tests and scripts read this first line of stdout for the address.
    print(f"OpenRouter simulator listening on http://{host}:{bound}{API_PREFIX}", flush=True)
    cfg = simulator.config
    day = "real UTC days" if cfg.day_seconds is None else f"days of {cfg.day_seconds:g} s"
    print(
        f"free tier: {cfg.free_per_minute} requests per {cfg.free_window_seconds:g} s, {cfg.free_per_day} per "
        f"day ({day}); {len(simulator.models)} models (OpenRouter's list as of {_snapshot()['snapshot']})",
        file=sys.stderr,
        flush=True,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    simulator_main()
