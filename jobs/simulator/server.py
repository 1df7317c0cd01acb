"""An OpenRouter simulator on loopback HTTP: the aiohttp app, its handlers and routes, the state they share.

The test suite runs against it, `orbatch simulator` serves it for a user without a key, and `orbatch run
--simulator` serves it inside the run. Behaviour is set at start (`orbatch simulator`'s options, or
`config_from_args` for ORBATCH_SIMULATOR_ARGS, in `jobs.simulator.main`) or while it runs through `POST
/_sim/config` with any `SimConfig` field (`jobs.simulator.config`); `GET /_sim/calls` shows what it received
(bodies, never the key) and `GET /_sim/stats` counts calls by status and outcome.

The parts live beside it: the catalogue, prices and costs in `catalogue`, the free tier's limits in `limits`,
scripted rules, chaos and outages in `faults`, the shapes of answers in `replies`. `POST /_sim/config
{"models": [{"id", "prompt", "completion", "request"?}, ...]}` replaces the model list (full `/models` entries
with `pricing` work too), `{"embedding_models": [{"id", "prompt", "dimensions", "input_modalities"?}, ...]}`
the embeddings models; `{"reset": true}` restores both and forgets the calls, the counts and the batches.
**Models that err**: `{"err_rate": {"model": 0.3}, "err_label": null}` makes that share of a model's replies to
a JSON-schema request fail the schema (`replies.should_err`, `replies.erring_reply`); a correction turn is
answered right, and rules and answers of one are matched on the message it corrects (`replies.prompt_text`).
**Models that mislabel**: `{"label_noise": {"model": 0.2}}` gives that share of prompts (drawn from the model and
the prompt alone, so the same records every run) a valid reply whose every enum field holds another value of
its enum, and `{"fixed_label": {"model": "spam"}}` a valid reply whose every enum field whose enum holds that
label holds it (`replies.labelled_reply`): two simulated models then disagree on some records. All three apply
to live calls and Batch API lines alike; a setting for `m` applies to its `m:batch` variant too. From the
command line: `--err-rate MODEL=RATE`, `--err-label LABEL`, `--label-noise MODEL=RATE`, `--fixed-label
MODEL=LABEL` (the per-model ones repeatable), so `ORBATCH_SIMULATOR_ARGS` takes them for `run --simulator`.

**The Batch API** (`/api/v1/batches`, and `/api/beta/batches` for create and get) keeps its batches in
`batches.BatchStore`; the decisions where OpenRouter's docs are silent are in that module's docstring. Its
lines are answered by the same code as `/chat/completions` and `/embeddings` (replies, scripted rules, models
that err or mislabel; a line whose prompt and `max_tokens` overflow the batch model's context is a 400), never
recorded in `GET /_sim/calls`; `GET /_sim/batches` shows every batch with its lines and how often its results
were read. **Embeddings** (`POST /embeddings`, `GET /embeddings/models`) are in `embeddings`; their calls are
recorded beside the chat calls, each with its `path`. `POST /_sim/reset` is `POST /_sim/config {"reset":
true}`.

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
from collections.abc import Awaitable, Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web

from jobs.core.constants import SIMULATOR_HEADER
from jobs.formats.structured import requested_schema
from jobs.simulator import batches, embeddings, faults, limits, replies
from jobs.simulator.catalogue import API_PREFIX, BATCH_SUFFIX, Catalogue, default_models, snapshot_date
from jobs.simulator.config import (
    BATCH_MODEL_POLICIES,
    DAY_SECONDS,
    MINUTE_SECONDS,
    Rule,
    SimConfig,
    checked_per_model,
    per_model,
)

__all__ = ["Simulator", "serve", "serve_forever"]

# When the request being answered arrived (each aiohttp request runs in its own task and context).
_arrived: contextvars.ContextVar[float] = contextvars.ContextVar("arrived")
# The reset the request arrived after: a call still running when the counters are reset (a test's lingering call,
# answered during the next test) is not counted in the new ones.
_arrival_epoch: contextvars.ContextVar[int] = contextvars.ContextVar("arrival_epoch", default=-1)

CHAT_PATH = "/chat/completions"
EMBEDDINGS_PATH = "/embeddings"
BETA_PREFIX = "/api/beta"
_EMBEDDINGS_PAGE = (0, 1, 1000, 500)  # offset's minimum, limit's minimum, maximum and default


def _no_record(status: int, outcome: str, model: str | None = None) -> None:
    """The batch routes' calls are not live calls: `GET /_sim/batches` counts them instead."""


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
        self.batches = batches.BatchStore(self._answer_line)
        self.reset_counters()

    def reset_counters(self) -> None:
        """Forget the calls, the free-tier counters and the batches."""
        self.batches.clear()
        self.free_tier = limits.FreeTier(self.config, time.time())
        self.calls: list[dict[str, Any]] = []
        self.stats: collections.Counter[str] = collections.Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        # Calls still running at a reset (a killed worker's hang) must not count against the next test's.
        self.epoch += 1
        self.generation = 0
        self.spent = Decimal(0)
        # Calls an erring model has seen of each prompt, so that a prompt sent again is drawn afresh.
        self.err_seen: collections.Counter[tuple[str, str]] = collections.Counter()
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
        if data.get("batch_model_policy", "variant") not in BATCH_MODEL_POLICIES:
            raise ValueError(f"batch_model_policy must be one of {BATCH_MODEL_POLICIES}")
        for key, value in data.items():
            if key == "rules":
                self.config.rules = [Rule.from_json(r) for r in value]
            elif key == "models":
                self.catalogue = Catalogue.configured(value, self.catalogue.embeddings.values())
            elif key == "embedding_models":
                self.catalogue = self.catalogue.with_embeddings(value)
            elif key in ("err_rate", "label_noise", "fixed_label"):
                setattr(self.config, key, checked_per_model(key, value))
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
        priced_as: str | None = None,
    ) -> dict[str, Any]:
        """A completion of `model` with this content, billed at its prices to the key's spending; a batch line's
        (`priced_as` its `:batch` entry) at the batch price, with a `gen-batch-` id and no BYOK."""
        self.generation += 1
        prompt_tokens, completion_tokens = replies.token_counts(prompt_text, content)
        cost = self.catalogue.cost(priced_as or model, prompt_tokens, completion_tokens)
        self.spent += cost.total
        batch = priced_as is not None
        usage = replies.usage(
            prompt_tokens,
            completion_tokens,
            cost,
            byok=self.config.byok and not batch,
            omit_cost=self.config.omit_cost and not batch,
        )
        return replies.completion(
            self.generation, model, content, usage, finish, choice_error, "gen-batch" if batch else "gen"
        )

    def _embedding(
        self, request: embeddings.EmbeddingRequest, priced_as: str | None = None
    ) -> dict[str, Any]:
        """The embeddings of a checked request, billed as `_completion` bills (`priced_as`: a batch line)."""
        self.generation += 1
        text_tokens, other_tokens = embeddings.tokens(request)
        cost = self.catalogue.cost(priced_as or request.model_id, text_tokens + other_tokens, 0)
        self.spent += cost.total
        batch = priced_as is not None
        usage = embeddings.usage(
            text_tokens,
            other_tokens,
            cost,
            byok=self.config.byok and not batch,
            omit_cost=self.config.omit_cost and not batch,
        )
        prefix = "gen-batch" if batch else "embd"
        return embeddings.response(request, f"{prefix}-{int(time.time())}-{self.generation:08d}", usage)

    def _answer_line(self, batch: batches.Batch, line: batches.Line) -> faults.LineAnswer:
        """A batch line answered as the live route answers its body (rules, echo, structured output)."""
        cfg = self.config
        body = {**line.body, "model": batch.spec.model}  # a line's model is the batch's
        priced_as = batch.priced_as
        if batch.spec.endpoint == "/v1/embeddings":
            request = embeddings.read_request(body, self.catalogue)
            if isinstance(request, embeddings.Problem):
                return faults.LineAnswer(request.status, replies.error_body(request.status, request.message))
            checked = request

            def embed() -> dict[str, Any]:
                return self._embedding(checked, priced_as)

            rule = faults.pick(cfg, embeddings.input_text(body), line.custom_id)
            return faults.line_answer(rule, None, embed) if rule else faults.LineAnswer(200, embed())
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return faults.LineAnswer(400, replies.error_body(400, 'Input required: specify "messages"'))
        text = replies.last_user_text(messages)

        def complete(
            content: str, finish: str = "stop", choice_error: dict[str, Any] | None = None
        ) -> dict[str, Any]:
            return self._completion(batch.spec.model, text, content, finish, choice_error, priced_as)

        def reply() -> dict[str, Any]:
            return complete(self._reply(body, batch.spec.model, text) or f"echo: {text}")

        rule = faults.pick(cfg, text, line.custom_id)
        if rule is not None:
            return faults.line_answer(rule, complete, reply)
        if batch.spec.model in cfg.down_models:
            message = f"{batch.spec.model} is temporarily unavailable"
            return faults.LineAnswer(
                503, replies.error_body(503, message, metadata={"provider_name": batch.provider})
            )
        context = self.catalogue.context_of(batch.spec.model)
        prompt_tokens, wanted = replies.token_counts(text, "")[0], replies.completion_bound(body)
        if context is not None and prompt_tokens + wanted > context:
            # A batch has one model: no other model of a chain to move on to, as a live call's `models` has.
            message = replies.context_message(context, prompt_tokens, wanted)
            return faults.LineAnswer(
                400, replies.error_body(400, message, code=400, metadata={"provider_name": batch.provider})
            )
        return faults.LineAnswer(200, reply())

    def _reply(self, body: dict[str, Any], model: str, text: str) -> str | None:
        """A structured reply (a live call's or a batch line's): wrong when the model errs on this call
        (`err_rate`), else valid, mislabelled on the prompts it mislabels (`label_noise`, `fixed_label`)."""
        cfg = self.config
        if requested_schema(body) is None:
            return None
        rate: float | None = per_model(cfg.err_rate, model)
        if rate:
            seen = self.err_seen[(model, text)]
            self.err_seen[(model, text)] += 1
            if replies.should_err(rate, model, text, seen, body["messages"]):
                return replies.erring_reply(body, text, cfg.err_label)
        noise: float | None = per_model(cfg.label_noise, model)
        # Drawn on the base model's id, so a model mislabels the same records live and in a batch.
        return replies.labelled_reply(
            body,
            text,
            model.removesuffix(BATCH_SUFFIX),
            noise=noise or 0.0,
            fixed=per_model(cfg.fixed_label, model),
        )

    def _record(
        self, body: Any, status: int, outcome: str, model: str | None = None, path: str = CHAT_PATH
    ) -> None:
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
                    "path": path,
                }
            )

    def _auth_refusal(self, request: web.Request) -> tuple[web.Response, str] | None:
        """The 401 for a call without a valid key, and its outcome; None when the key is good."""
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return replies.error_response(401, "No auth credentials found"), "no_key"
        if self.config.valid_keys is not None and auth[7:] not in self.config.valid_keys:
            return replies.error_response(401, "User not found."), "bad_key"
        return None

    # --- handlers --------------------------------------------------------------------------------------
    async def _counted(
        self, request: web.Request, handle: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """A call, counted in flight while it is answered (a reset's new epoch counts afresh)."""
        _arrived.set(time.time())
        epoch = self.epoch
        _arrival_epoch.set(epoch)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await handle(request)
        finally:
            if self.epoch == epoch:
                self.in_flight -= 1

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._counted(request, self._chat)

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
        refused = self._auth_refusal(request)
        if refused is not None:
            self._record(None, 401, refused[1])
            return refused[0]
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
        text = replies.prompt_text(body["messages"])
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
        prompt_tokens = replies.token_counts(text, "")[0]
        wanted = replies.completion_bound(body)
        too_small: list[tuple[str, int]] = []
        for model in candidates:
            if model in cfg.down_models:
                continue
            context = self.catalogue.context_of(model)
            if context is not None and prompt_tokens + wanted > context:
                # No provider of the model can take it; OpenRouter moves on to the next model of `models`.
                too_small.append((model, context))
                continue
            content = self._reply(body, model, text) or replies.echo(text, wanted)
            self._record(body, 200, "ok", model)
            return replies.json_response(self._completion(model, text, content))
        if too_small:
            model, context = too_small[0]
            self._record(body, 400, "context_length", model)
            return replies.error_response(
                400,
                replies.context_message(context, prompt_tokens, wanted),
                code=400,
                metadata={"provider_name": "SimProvider"},
            )
        self._record(body, 503, "all_down")
        return replies.error_response(
            503,
            f"{candidates[-1]} is temporarily unavailable",
            metadata={"provider_name": "SimProvider", "raw": "upstream down"},
        )

    # --- embeddings ------------------------------------------------------------------------------------
    async def embed(self, request: web.Request) -> web.StreamResponse:
        return await self._counted(request, self._embed)

    async def _embed(self, request: web.Request) -> web.StreamResponse:
        cfg = self.config

        def record(status: int, outcome: str, model: str | None = None, body: Any = None) -> None:
            self._record(body, status, outcome, model, EMBEDDINGS_PATH)

        down = faults.openrouter_down(cfg)
        if down is not None:
            record(down.status, "outage")
            return down
        refused = self._auth_refusal(request)
        if refused is not None:
            record(401, refused[1])
            return refused[0]
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            record(413, "too_large")
            return replies.error_response(413, replies.SPEC_MESSAGES[413])
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            record(400, "bad_json")
            return replies.error_response(400, "Invalid JSON in request body")

        def record_call(status: int, outcome: str, model: str | None = None) -> None:
            record(status, outcome, model, body)

        rule = faults.pick_route(cfg, "embeddings")
        if rule is not None:
            return await faults.answer_plain(rule, request, record_call)
        checked = embeddings.read_request(body, self.catalogue)
        if isinstance(checked, embeddings.Problem):
            record_call(checked.status, "invalid" if checked.status == 400 else "unknown_model")
            return replies.error_response(checked.status, checked.message)
        if cfg.credits is not None and cfg.credits <= 0:
            record_call(402, "no_credits")
            return replies.error_response(402, replies.SPEC_MESSAGES[402])
        if checked.model_id.endswith(":free"):
            refusal = self.free_tier.admit(cfg, time.time())
            if refusal is not None:
                self.stats[f"429:{refusal.name}"] += 1
                record_call(429, "rate_limited")
                return limits.too_many_requests(refusal)
        down = faults.providers_down(cfg)
        if down is not None:
            record_call(down.status, "outage")
            return down
        if checked.model_id in cfg.down_models:
            # The model's providers are all down: OpenRouter's 503, as a chat call to it gets.
            record_call(503, "all_down")
            return replies.error_response(503, f"{checked.model_id} is temporarily unavailable")
        if cfg.latency_ms:
            await asyncio.sleep(cfg.latency_ms / 1000)
        request_checked = checked

        def answer() -> dict[str, Any]:
            return self._embedding(request_checked)

        rule = faults.pick(cfg, embeddings.input_text(body))
        if rule is not None:
            return await faults.answer_plain(rule, request, record_call, answer)
        record_call(200, "ok", checked.model_id)
        return replies.json_response(answer())

    async def embedding_models(self, request: web.Request) -> web.Response:
        """`GET /embeddings/models`: the embeddings models, all of them unless `offset` or `limit` is given."""
        down = faults.openrouter_down(self.config)
        if down is not None:
            return down
        query = request.query
        lowest_offset, lowest_limit, highest_limit, default_limit = _EMBEDDINGS_PAGE
        if "offset" not in query and "limit" not in query:
            return replies.json_response(self.catalogue.embeddings_page(0, None))
        try:
            offset = int(query.get("offset", lowest_offset))
            limit = int(query.get("limit", default_limit))
        except ValueError:
            offset = limit = -1
        if offset < lowest_offset or not lowest_limit <= limit <= highest_limit:
            message = f"Invalid request parameters: offset must be 0 or more, limit from 1 to {highest_limit}"
            return replies.error_response(400, message)
        return replies.json_response(self.catalogue.embeddings_page(offset, limit))

    # --- the Batch API ---------------------------------------------------------------------------------
    async def _batch_gate(self, request: web.Request, route: str) -> web.StreamResponse | None:
        """What a batch route answers before looking at the batch: an outage, 401, 404 when the Batch API is
        off, a scripted failure of the route; None to go on."""
        cfg = self.config
        down = faults.openrouter_down(cfg)
        if down is not None:
            return down
        refused = self._auth_refusal(request)
        if refused is not None:
            return refused[0]
        if not cfg.batches_enabled:
            return replies.error_response(404, "The Batch API is not enabled for this key")
        rule = faults.pick_route(cfg, route)
        if rule is not None:
            return await faults.answer_plain(rule, request, _no_record)
        return None

    def _batch(self, request: web.Request) -> batches.Batch | web.Response:
        batch = self.batches.find(request.match_info["batch_id"])
        if batch is None:
            return replies.error_response(404, f"Batch {request.match_info['batch_id']} not found")
        return batch

    def _unpaid(self, batch: batches.Batch) -> web.Response | None:
        """402 with the batch (results withheld) while the key's usage is above its credit limit."""
        credits = self.config.credits
        if not batch.final or credits is None or self.spent <= Decimal(str(credits)) or batch.cost() <= 0:
            return None
        body = {**batch.object(results=False), "error": {"code": 402, "message": replies.SPEC_MESSAGES[402]}}
        return web.Response(status=402, body=orjson.dumps(body), content_type="application/json")

    async def batch_create(self, request: web.Request) -> web.StreamResponse:
        refusal = await self._batch_gate(request, "batches.create")
        if refusal is not None:
            return refusal
        cfg = self.config
        raw = await _read_capped(request, cfg.batch_max_bytes)
        if raw is None:
            return replies.error_response(413, replies.SPEC_MESSAGES[413])
        try:
            spec = batches.read_create(raw, cfg)
        except batches.Refused as refused:
            return replies.error_response(refused.status, refused.message)
        if cfg.batch_model_policy == "variant" and not spec.model.endswith(BATCH_SUFFIX):
            return replies.error_response(
                400,
                f"{spec.model} is not a batch model: send its batch variant's slug ({spec.model}{BATCH_SUFFIX})",
            )
        if cfg.credits is not None and cfg.credits <= 0:
            return replies.error_response(402, replies.SPEC_MESSAGES[402])
        batch = self.batches.create(spec, cfg, self.catalogue)
        return web.Response(
            status=202, body=orjson.dumps(batch.object(results=False)), content_type="application/json"
        )

    async def batch_list(self, request: web.Request) -> web.StreamResponse:
        refusal = await self._batch_gate(request, "batches.list")
        if refusal is not None:
            return refusal
        query = request.query
        try:
            listing = self.batches.listing(
                query.get("limit"),
                query.get("after"),
                query.getall("status", []),
                query.get("created_after"),
                query.get("created_before"),
            )
        except batches.Refused as refused:
            return replies.error_response(refused.status, refused.message)
        return replies.json_response(listing)

    async def batch_get(self, request: web.Request) -> web.StreamResponse:
        refusal = await self._batch_gate(request, "batches.get")
        if refusal is not None:
            return refusal
        batch = self._batch(request)
        if isinstance(batch, web.Response):
            return batch
        batch.gets += 1
        unpaid = self._unpaid(batch)
        if unpaid is not None:
            return unpaid
        body = batch.object(results=True)
        if body["results"] is not None:
            batch.results_inline_fetched += 1
        return replies.json_response(body)

    async def batch_results(self, request: web.Request) -> web.StreamResponse:
        refusal = await self._batch_gate(request, "batches.results")
        if refusal is not None:
            return refusal
        batch = self._batch(request)
        if isinstance(batch, web.Response):
            return batch
        if not batch.final:
            return replies.error_response(
                409, f"Batch {batch.id} is {batch.status}: its results can be read once it has finished"
            )
        unpaid = self._unpaid(batch)
        if unpaid is not None:
            return unpaid
        try:
            page = self.batches.page(batch, request.query.get("limit"), request.query.get("cursor"))
        except batches.Refused as refused:
            return replies.error_response(refused.status, refused.message)
        batch.results_pages_fetched += 1
        return replies.json_response(page)

    async def batch_cancel(self, request: web.Request) -> web.StreamResponse:
        refusal = await self._batch_gate(request, "batches.cancel")
        if refusal is not None:
            return refusal
        batch = self._batch(request)
        if isinstance(batch, web.Response):
            return batch
        if not self.config.batch_cancel_allowed:
            return replies.error_response(403, "Batch cancellation is not enabled for this organization")
        if batch.final:
            return replies.error_response(409, f"Batch {batch.id} is already {batch.status}")
        return replies.json_response(self.batches.cancel(batch))

    async def batch_delete(self, request: web.Request) -> web.StreamResponse:
        refusal = await self._batch_gate(request, "batches.delete")
        if refusal is not None:
            return refusal
        batch = self._batch(request)
        if isinstance(batch, web.Response):
            return batch
        if not batch.final:
            return replies.error_response(
                409, f"Batch {batch.id} is {batch.status}: only a finished batch can be deleted"
            )
        return replies.json_response(self.batches.delete(batch))

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

    async def reset(self, _: web.Request) -> web.Response:
        self.configure({"reset": True})
        return web.json_response({"ok": True})

    async def get_calls(self, _: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.calls), content_type="application/json")

    async def get_batches(self, _: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.batches.views()), content_type="application/json")

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
        app.on_cleanup.append(self._stop_batches)
        app.router.add_post(f"{API_PREFIX}{CHAT_PATH}", self.chat)
        app.router.add_post(f"{API_PREFIX}{EMBEDDINGS_PATH}", self.embed)
        app.router.add_get(f"{API_PREFIX}/embeddings/models", self.embedding_models)
        app.router.add_get(f"{API_PREFIX}/models", self.list_models)
        app.router.add_get(f"{API_PREFIX}/key", self.key)
        for prefix in (API_PREFIX, BETA_PREFIX):
            app.router.add_post(f"{prefix}/batches", self.batch_create)
            app.router.add_get(f"{prefix}/batches/{{batch_id}}", self.batch_get)
        app.router.add_get(f"{API_PREFIX}/batches", self.batch_list)
        app.router.add_get(f"{API_PREFIX}/batches/{{batch_id}}/results", self.batch_results)
        app.router.add_post(f"{API_PREFIX}/batches/{{batch_id}}/cancel", self.batch_cancel)
        app.router.add_delete(f"{API_PREFIX}/batches/{{batch_id}}", self.batch_delete)
        app.router.add_post("/_sim/config", self.set_config)
        app.router.add_post("/_sim/reset", self.reset)
        app.router.add_get("/_sim/calls", self.get_calls)
        app.router.add_get("/_sim/stats", self.get_stats)
        app.router.add_get("/_sim/batches", self.get_batches)
        return app

    async def _stop_batches(self, _: web.Application) -> None:
        self.batches.clear()


async def _read_capped(request: web.Request, limit: int) -> bytes | None:
    """The request's body, or None once it is over `limit` bytes (read no further than that)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(1 << 20):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


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
