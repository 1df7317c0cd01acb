"""An OpenRouter simulator on loopback HTTP: free-tier limits, `models` fallback, errors and usage as the real one.

The test suite runs against it, and so can a user without a key (`orbatch simulator`). Behaviour is set
at start or through `POST /_sim/config`; `GET /_sim/calls` shows what it received (never the key).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import contextvars
import hashlib
import random
import socket
import struct
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web

from worker.structured import requested_schema

__all__ = ["API_PREFIX", "DEFAULT_MODELS", "SimConfig", "Simulator", "config_from_args", "main", "serve"]

API_PREFIX = "/api/v1"

# id -> (prompt USD per token, completion USD per token), the strings OpenRouter's /models uses.
DEFAULT_MODELS: dict[str, tuple[str, str]] = {
    "meta-llama/llama-3.3-70b-instruct:free": ("0", "0"),
    "google/gemma-3-27b-it:free": ("0", "0"),
    "mistralai/mistral-small-3.2-24b-instruct:free": ("0", "0"),
    "deepseek/deepseek-chat-v3-0324:free": ("0", "0"),
    "qwen/qwen3-235b-a22b:free": ("0", "0"),
    "openai/gpt-4o-mini": ("0.00000015", "0.0000006"),
    "anthropic/claude-3.5-haiku": ("0.0000008", "0.000004"),
    "google/gemini-2.0-flash-001": ("0.0000001", "0.0000004"),
    "mistralai/mistral-small-3.2-24b-instruct": ("0.00000005", "0.0000001"),
    "sim/echo": ("0.000001", "0.000002"),
    "sim/echo:free": ("0", "0"),
    "sim/backup": ("0.000002", "0.000004"),
    "sim/backup:free": ("0", "0"),
    "sim/spare": ("0.000003", "0.000006"),
    "sim/last-resort": ("0.000004", "0.000008"),
}

# When the request being answered arrived (each aiohttp request runs in its own task and context).
_arrived: contextvars.ContextVar[float] = contextvars.ContextVar("arrived")

_RULE_KINDS = ("status", "error_in_200", "top_level_error", "not_json", "hang", "reset", "reply")


@dataclass(slots=True)
class Rule:
    """A scripted answer for requests whose last user message contains `match`."""

    match: str
    kind: str = "status"
    status: int = 500
    times: int = -1  # how many requests it answers; -1 for all
    code: Any = None
    message: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] | None = None
    content: str | None = None
    seconds: float = 3600.0
    # For a scripted 429: X-RateLimit-Reset this many seconds from now, in the headers and the metadata.
    reset_in_seconds: float | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Rule:
        rule = cls(**{k: v for k, v in data.items() if k in cls.__slots__})
        if rule.kind not in _RULE_KINDS:
            raise ValueError(f"rule kind must be one of {_RULE_KINDS}")
        return rule


@dataclass(slots=True)
class SimConfig:
    """How the simulator behaves; every field can be changed while it runs."""

    latency_ms: float = 0.0
    free_per_minute: int = 20
    free_window_seconds: float = 60.0
    free_per_day: int = 50
    # Length of a simulated "day" for the daily quota; None means real UTC days.
    day_seconds: float | None = None
    down_models: list[str] = field(default_factory=list)
    valid_keys: list[str] | None = None
    is_free_tier: bool = True
    credits: float | None = None  # None: no credit check; 0 or less: 402 on every call
    record_calls: bool = True
    # Leave `usage.cost` out of answers (some providers and proxies do), to exercise cost estimates.
    omit_cost: bool = False
    # Answer as a bring-your-own-key call: `cost` is OpenRouter's fee, the provider's price is upstream.
    byok: bool = False
    # Chaos: the chance that any call fails with a 500, an error inside HTTP 200, or hangs for a while.
    chaos_500: float = 0.0
    chaos_error_in_200: float = 0.0
    chaos_hang: float = 0.0
    chaos_hang_seconds: float = 30.0
    rules: list[Rule] = field(default_factory=list)


class Simulator:
    """The simulator's state and its HTTP handlers."""

    def __init__(
        self, config: SimConfig | None = None, models: dict[str, tuple[str, str]] | None = None
    ) -> None:
        self.config = config or SimConfig()
        self.initial_models = dict(models or DEFAULT_MODELS)
        self.models = dict(self.initial_models)
        self.started = time.time()
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

    # --- configuration -------------------------------------------------------------------------------
    def configure(self, data: dict[str, Any]) -> None:
        """Apply a partial configuration (the body of POST /_sim/config); `reset` also restores the models."""
        if data.get("reset"):
            self.reset_counters()
            self.models = dict(self.initial_models)
        for key, value in data.items():
            if key == "rules":
                self.config.rules = [Rule.from_json(r) for r in value]
            elif key == "models":
                self.models = {m["id"]: (str(m["prompt"]), str(m["completion"])) for m in value}
            elif key != "reset":
                if not hasattr(self.config, key):
                    raise ValueError(f"unknown setting {key!r}")
                setattr(self.config, key, value)

    # --- free-tier limits ------------------------------------------------------------------------------
    def _day_index(self, now: float) -> int:
        if self.config.day_seconds:
            return int((now - self.started) // self.config.day_seconds)
        return int(now // 86400)

    def _day_reset_ms(self, now: float) -> int:
        if self.config.day_seconds:
            return int((self.started + (self._day_index(now) + 1) * self.config.day_seconds) * 1000)
        midnight = (datetime.fromtimestamp(now, UTC) + timedelta(days=1)).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        return int(midnight.timestamp() * 1000)

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
        prompt_price, completion_price = self.models[model]
        cost = Decimal(prompt_price) * prompt_tokens + Decimal(completion_price) * completion_tokens
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
                "upstream_inference_prompt_cost": float(Decimal(prompt_price) * prompt_tokens),
                "upstream_inference_completions_cost": float(Decimal(completion_price) * completion_tokens),
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
        self.stats["calls"] += 1
        self.stats[f"status:{status}"] += 1
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
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._chat(request)
        finally:
            if self.epoch == epoch:
                self.in_flight -= 1

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        cfg = self.config
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
            return await self._apply(rule, request, body, candidates, text)
        for model in candidates:
            if model in cfg.down_models:
                continue
            content = _structured_reply(body, text) or f"echo: {text}"
            self._record(body, 200, "ok", model)
            return web.json_response(
                self._completion(model, text, content), dumps=lambda v: orjson.dumps(v).decode()
            )
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
            return web.json_response(
                self._completion(model, text, rule.content or ""), dumps=lambda v: orjson.dumps(v).decode()
            )
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
            completion = self._completion(model, text, "", finish="error", choice_error=error)
            return web.json_response(completion, dumps=lambda v: orjson.dumps(v).decode())
        if rule.kind == "top_level_error":
            self._record(body, 200, "top_level_error")
            error = {"code": rule.code or 502, "message": rule.message or "Provider returned error"}
            return web.json_response(
                {"error": error, "user_id": "user_sim"}, dumps=lambda v: orjson.dumps(v).decode()
            )
        if rule.kind == "not_json":
            self._record(body, rule.status, "not_json")
            return web.Response(
                status=rule.status, text="<html><body>502 Bad Gateway</body></html>", content_type="text/html"
            )
        if rule.kind == "hang":
            self._record(body, 0, "hang")
            await asyncio.sleep(rule.seconds)
            return self._error(504, "simulated hang ended")
        # reset: drop the connection with a RST, as a crashed proxy does
        self._record(body, 0, "reset")
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        raise asyncio.CancelledError

    async def list_models(self, _: web.Request) -> web.Response:
        data = [
            {
                "id": model_id,
                "canonical_slug": model_id,
                "name": model_id,
                "created": int(self.started),
                "description": "a simulated model",
                "context_length": 131072,
                "architecture": {
                    "modality": "text->text",
                    "input_modalities": ["text"],
                    "output_modalities": ["text"],
                    "tokenizer": "Other",
                    "instruct_type": None,
                },
                "pricing": {
                    "prompt": prompt,
                    "completion": completion,
                    "request": "0",
                    "image": "0",
                    "web_search": "0",
                    "internal_reasoning": "0",
                },
                "top_provider": {
                    "context_length": 131072,
                    "max_completion_tokens": 8192,
                    "is_moderated": False,
                },
                "per_request_limits": None,
                "supported_parameters": [
                    "max_tokens",
                    "temperature",
                    "top_p",
                    "stop",
                    "seed",
                    "response_format",
                ],
            }
            for model_id, (prompt, completion) in self.models.items()
        ]
        return web.json_response({"data": data}, dumps=lambda v: orjson.dumps(v).decode())

    async def key(self, request: web.Request) -> web.Response:
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
        return web.json_response({"data": data}, dumps=lambda v: orjson.dumps(v).decode())

    async def set_config(self, request: web.Request) -> web.Response:
        try:
            self.configure(await request.json(loads=orjson.loads))
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"ok": True})

    async def get_calls(self, _: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.calls), content_type="application/json")

    async def get_stats(self, _: web.Request) -> web.Response:
        stats = dict(self.stats)
        stats.update(max_in_flight=self.max_in_flight, in_flight=self.in_flight, day_count=self.day_count)
        return web.json_response(stats)

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post(f"{API_PREFIX}/chat/completions", self.chat)
        app.router.add_get(f"{API_PREFIX}/models", self.list_models)
        app.router.add_get(f"{API_PREFIX}/key", self.key)
        app.router.add_post("/_sim/config", self.set_config)
        app.router.add_get("/_sim/calls", self.get_calls)
        app.router.add_get("/_sim/stats", self.get_stats)
        return app


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
    runner = web.AppRunner(simulator.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    server = site._server
    bound = server.sockets[0].getsockname()[1] if server is not None and server.sockets else port  # type: ignore[attr-defined]
    return runner, int(bound)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="orbatch simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--free-per-minute", type=int, default=20)
    parser.add_argument("--free-window-seconds", type=float, default=60.0)
    parser.add_argument("--free-per-day", type=int, default=50)
    parser.add_argument("--day-seconds", type=float, default=None)
    parser.add_argument(
        "--no-record", action="store_true", help="do not keep request bodies (long benchmarks)"
    )
    return parser.parse_args(argv)


def _config(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        latency_ms=args.latency_ms,
        free_per_minute=args.free_per_minute,
        free_window_seconds=args.free_window_seconds,
        free_per_day=args.free_per_day,
        day_seconds=args.day_seconds,
        record_calls=not args.no_record,
    )


def config_from_args(argv: list[str]) -> SimConfig:
    """A simulator configuration from `orbatch simulator`'s options (for `orbatch run --simulator`)."""
    return _config(_parse_args(argv))


async def _run(args: argparse.Namespace) -> None:
    runner, port = await serve(Simulator(_config(args)), args.host, args.port)
    print(f"OpenRouter simulator listening on http://{args.host}:{port}{API_PREFIX}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    """Run the simulator until interrupted."""
    args = _parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run(args))


if __name__ == "__main__":
    main()
