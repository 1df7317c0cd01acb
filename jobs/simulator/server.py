"""An OpenRouter simulator on loopback HTTP: the aiohttp app, its handlers and routes, the state they share.

The test suite runs against it, `orbatch simulator` serves it for a user without a key, and `orbatch run
--simulator` serves it inside the run. Behaviour is set at start (`orbatch simulator`'s options, or
`config_from_args` for ORBATCH_SIMULATOR_ARGS, in `jobs.simulator.main`) or while it runs through `POST
/_sim/config` with any `SimConfig` field (`jobs.simulator.config`); `GET /_sim/calls` shows what it received
(bodies, never the key) and `GET /_sim/stats` counts calls by status and outcome.

The parts live beside it: the catalogue, prices and costs in `catalogue`, the free tier's limits in `limits`,
scripted rules, chaos and outages in `faults`, the shapes of answers in `replies`. `POST /_sim/config
{"models": [{"id", "prompt", "completion", "request"?}, ...]}` replaces the model list (full `/models` entries
with `pricing` work too); `{"reset": true}` restores it and forgets the calls and the counts.

**`GET /key`** answers OpenRouter's fields (`is_free_tier`, `limit`, `usage`...) plus a simulator-only object,
`data.simulator` (`limits.limits`): `{"free_per_minute", "free_window_seconds", "free_per_day", "day_seconds",
"day_started_at", "speed", "instance", "counting_since"}`.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web

from jobs.core.constants import SIMULATOR_HEADER
from jobs.simulator import faults, limits, replies
from jobs.simulator.catalogue import API_PREFIX, Catalogue, default_models, snapshot_date
from jobs.simulator.config import DAY_SECONDS, MINUTE_SECONDS, Rule, SimConfig

__all__ = ["Simulator", "serve", "serve_forever"]

# When the request being answered arrived (each aiohttp request runs in its own task and context).
_arrived: contextvars.ContextVar[float] = contextvars.ContextVar("arrived")
# The reset the request arrived after: a call still running when the counters are reset (a test's lingering call,
# answered during the next test) is not counted in the new ones.
_arrival_epoch: contextvars.ContextVar[int] = contextvars.ContextVar("arrival_epoch", default=-1)


class Simulator:
    """The simulator's state and its HTTP handlers."""

    def __init__(
        self, config: SimConfig | None = None, models: Iterable[Mapping[str, Any]] | None = None
    ) -> None:
        self.config = config or SimConfig()
        self.initial_models = [dict(m) for m in (default_models() if models is None else models)]
        self.catalogue = Catalogue(self.initial_models)
        self.started = time.time()
        # Who this simulator is: a new one (or one reset) is a new account whose counts start from nothing,
        # which a worker tells from this id, sent on every answer (401s included) and in GET /key.
        self.instance = uuid.uuid4().hex[:12]
        self.epoch = 0
        self.reset_counters()

    def reset_counters(self) -> None:
        """Forget the calls and the free-tier counters."""
        self.free_tier = limits.FreeTier(self.config, time.time())
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

    # --- configuration -------------------------------------------------------------------------------
    def configure(self, data: dict[str, Any]) -> None:
        """Apply a partial configuration (the body of POST /_sim/config); `reset` also restores the models."""
        if data.get("reset"):
            self.reset_counters()
            self.catalogue = Catalogue(self.initial_models)
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
                self.catalogue = Catalogue.configured(value)
            elif key != "reset":
                if not hasattr(self.config, key):
                    raise ValueError(f"unknown setting {key!r}")
                setattr(self.config, key, value)

    # --- answers and records ---------------------------------------------------------------------------
    def _completion(
        self,
        model: str,
        prompt_text: str,
        content: str,
        finish: str = "stop",
        choice_error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A completion of `model` with this content, billed at its prices to the key's spending."""
        self.generation += 1
        prompt_tokens, completion_tokens = replies.token_counts(prompt_text, content)
        cost = self.catalogue.cost(model, prompt_tokens, completion_tokens)
        self.spent += cost.total
        usage = replies.usage(
            prompt_tokens, completion_tokens, cost, byok=self.config.byok, omit_cost=self.config.omit_cost
        )
        return replies.completion(self.generation, model, content, usage, finish, choice_error)

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
        down = faults.openrouter_down(cfg)
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
            return replies.error_response(401, "No auth credentials found")
        if cfg.valid_keys is not None and auth[7:] not in cfg.valid_keys:
            self._record(None, 401, "bad_key")
            return replies.error_response(401, "User not found.")
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self._record(None, 400, "bad_json")
            return replies.error_response(400, "Invalid JSON in request body")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
            self._record(body, 400, "no_messages")
            return replies.error_response(400, 'Input required: specify "messages"')
        models = body.get("models")
        if models is not None and (not isinstance(models, list) or len(models) > 3):
            self._record(body, 400, "too_many_models")
            return replies.error_response(400, "'models' array must have 3 items or fewer.")
        candidates: list[str] = (
            list(models) if models else ([body["model"]] if isinstance(body.get("model"), str) else [])
        )
        if not candidates:
            self._record(body, 400, "no_model")
            return replies.error_response(400, "No models provided")
        for model in candidates:
            if model not in self.catalogue.models:
                self._record(body, 400, "unknown_model")
                return replies.error_response(400, f"{model} is not a valid model ID", code=400)
        if cfg.credits is not None and cfg.credits <= 0:
            self._record(body, 402, "no_credits")
            return replies.error_response(
                402, "Insufficient credits. Add more using https://openrouter.ai/credits"
            )
        now = time.time()
        if candidates[0].endswith(":free"):
            refusal = self.free_tier.admit(cfg, now)
            if refusal is not None:
                self.stats[f"429:{refusal.name}"] += 1
                self._record(body, 429, "rate_limited")
                return limits.too_many_requests(refusal)
        down = faults.providers_down(cfg)
        if down is not None:
            self._record(body, down.status, "outage")
            return down
        text = replies.last_user_text(body["messages"])
        if cfg.latency_ms:
            await asyncio.sleep(cfg.latency_ms / 1000)
        rule = faults.pick(cfg, text)
        if rule is not None:
            first = candidates[0]

            def complete(
                content: str, finish: str = "stop", choice_error: dict[str, Any] | None = None
            ) -> dict[str, Any]:
                return self._completion(first, text, content, finish, choice_error)

            def record(status: int, outcome: str, model: str | None = None) -> None:
                self._record(body, status, outcome, model)

            return await faults.answer(rule, request, first, text, complete, record)
        for model in candidates:
            if model in cfg.down_models:
                continue
            content = replies.structured_reply(body, text) or f"echo: {text}"
            self._record(body, 200, "ok", model)
            return replies.json_response(self._completion(model, text, content))
        self._record(body, 503, "all_down")
        return replies.error_response(
            503,
            f"{candidates[-1]} is temporarily unavailable",
            metadata={"provider_name": "SimProvider", "raw": "upstream down"},
        )

    async def list_models(self, _: web.Request) -> web.Response:
        down = faults.openrouter_down(self.config)
        if down is not None:
            return down
        return web.Response(body=self.catalogue.body, content_type="application/json")

    async def key(self, request: web.Request) -> web.Response:
        down = faults.openrouter_down(self.config)
        if down is not None:
            return down
        if not request.headers.get("Authorization", "").startswith("Bearer "):
            return replies.error_response(401, "No auth credentials found")
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
            data["simulator"] = limits.limits(cfg, time.time(), self.instance, self.counting_since)
        return replies.json_response({"data": data})

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
        stats.update(
            max_in_flight=self.max_in_flight, in_flight=self.in_flight, day_count=self.free_tier.day_count
        )
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
        f"day ({day}); {len(simulator.catalogue.models)} models (OpenRouter's list as of {snapshot_date()})",
        file=sys.stderr,
        flush=True,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
