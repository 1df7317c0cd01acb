"""The simulated Batch API's store: a create's checks (the raw body's key order first), each batch's timed life,
its result lines, the list, results pages, cancel and delete, and the callback; kept in memory, as the rest of
the simulator's state (`POST /_sim/reset` clears it). The HTTP handlers are in `server`.

Where OpenRouter's docs are silent (shared/openrouter/batch-api.md), the simulator decides:
- **Timing.** A batch is `validating` for `batch_validating_seconds`, `in_progress` for
  `batch_in_progress_seconds`, `finalizing` for `batch_finalizing_seconds`, each divided by `speed`. Its lines
  are answered one by one during `in_progress`, in a shuffled order (lines run concurrently, in any order), and
  its results list them in the order they were answered.
- **Checks.** The shape of the body (key order, endpoint, `"24h"`, lines, ids, line models, provider keys, line
  count, size, the model policy) is a 400 (413 for size) at create. A model with no batch variant, an endpoint
  the simulator does not run (`/v1/responses`, `/v1/messages`), an endpoint that does not fit the model, Google
  lines whose `response_format`s differ, and base64 (`data:`) images are found after the 202: the batch is
  `failed` with `error.message` when its validation ends, with no results (`[]`) and no lines counted.
  Top-level keys other than the six documented, and line keys other than `custom_id` and `body`, are 400s.
- **Expiry.** `expires_at` is `created_at` plus `batch_window_seconds` (divided by `speed`). Lines not answered
  by then are **failed** result lines (`error.type` `batch_expired`, as OpenAI's Batch API writes them) after
  the answered ones, and the batch is `expired`. `batch_expire` puts the deadline halfway through
  `in_progress`.
- **Cancel.** The answer is the batch as it was (`in_progress`, as the reference says); from then on no line is
  answered, the batch shows `cancelling` until the provider confirms (`batch_cancel_seconds`), then
  `cancelled`, with no result rows (`results: []`) but its answered lines still counted and billed. A batch
  already `finalizing` completes.
- **Results.** `results` is null until the batch is terminal and always null in lists. `GET
  /batches/{id}/results` before then answers **409** (an empty page could be read as "no results"). Pages
  are cut by offset (the cursor is opaque and names its batch), so a page asked again is the same page.
- **Unpaid.** While the key's usage is above its credit limit (`credits`), a finished batch that cost something
  answers `GET` and `/results` with 402: the batch object with `results: null` and the error envelope's
  `error`; raising `credits` unlocks them. A create with `credits` at 0 or below is a 402.
- **Callback.** At the terminal status, one POST of `{"type": "batch.<status>", "data": {"id": ...}}`: this
  payload is invented (OpenRouter documents none). A failed delivery is logged and tried again twice, no more.
  `callback_url` must be https, or http on a loopback host (so tests receive it without TLS).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import math
import random
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from jobs.core.logs import get_logger
from jobs.simulator import embeddings
from jobs.simulator.catalogue import BATCH_SUFFIX, Catalogue
from jobs.simulator.config import SimConfig
from jobs.simulator.faults import LineAnswer

__all__ = [
    "ENDPOINTS",
    "STATUSES",
    "TERMINAL",
    "Batch",
    "BatchStore",
    "Line",
    "Refused",
    "key_order",
    "read_create",
]

log = get_logger(__name__)

ENDPOINTS = ("/v1/chat/completions", "/v1/responses", "/v1/messages", "/v1/embeddings")
# The endpoints whose lines the simulator can answer; the others pass the create and fail after it.
_SERVED = ("/v1/chat/completions", "/v1/embeddings")
STATUSES = (
    "validating",
    "in_progress",
    "finalizing",
    "completed",
    "failed",
    "expired",
    "cancelling",
    "cancelled",
)
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
_TOP_LEVEL = ("endpoint", "model", "requests", "completion_window", "provider", "callback_url")
_PROVIDER_KEYS = frozenset({"only", "allow_fallbacks"})
_LINE_KEYS = frozenset({"custom_id", "body"})
_LIST_LIMIT = (1, 100, 20)  # min, max, default
_RESULTS_LIMIT = (1, 1000, 500)
_PROVIDER = "SimProvider"
CALLBACK_ATTEMPTS = 3
CALLBACK_TIMEOUT_SECONDS = 10.0

# A JSON string (escapes included) or a bracket: enough to find an object's top-level keys without parsing it.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[{}\[\]]')
_COLON = re.compile(rb"\s*:")


class Refused(Exception):
    """A create refused before anything is stored: the HTTP status and the message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def key_order(raw: bytes, stop: str = "requests") -> list[str] | None:
    """The top-level keys of the JSON object in `raw`, in the order they come, up to `stop`; None if `raw` is
    not an object. Read from the bytes, as a stream parser meets them (a dict would not say it)."""
    start = len(raw) - len(raw.lstrip())
    if raw[start : start + 1] != b"{":
        return None
    depth = 0
    keys: list[str] = []
    for match in _TOKEN.finditer(raw, start):
        token = match.group()
        if token[0] == 0x22:  # a string: a key if at the top level and a colon follows
            if depth == 1 and _COLON.match(raw, match.end()):
                try:
                    keys.append(str(orjson.loads(token)))
                except orjson.JSONDecodeError:
                    return keys  # broken JSON: the parse that follows says so
                if keys[-1] == stop:
                    return keys
        elif token in (b"{", b"["):
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                break
    return keys


def _keys_before_requests(raw: bytes) -> list[str]:
    """The top-level keys before `requests`, checked: `endpoint` and `model` must be among them."""
    keys = key_order(raw)
    if keys is None:
        raise Refused(400, "Invalid JSON in request body: a batch is a JSON object")
    before = keys[:-1] if keys and keys[-1] == "requests" else keys
    if "endpoint" not in before or "model" not in before:
        # What OpenRouter answers when either is missing, too: its parser needs both before the lines.
        raise Refused(
            400, '"endpoint" and "model" must come before "requests" in the body (it is parsed as a stream)'
        )
    return before


def _callback_problem(url: Any) -> str | None:
    if not isinstance(url, str):
        return "callback_url must be a string"
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1"):
        return None  # the simulator's allowance, so tests receive callbacks without TLS
    return "callback_url must be an https URL"


def _provider_problem(provider: Any) -> str | None:
    if provider is None:
        return None
    if not isinstance(provider, dict):
        return "provider must be an object or null"
    extra = sorted(set(provider) - _PROVIDER_KEYS)
    if extra:
        return f"provider may hold only {sorted(_PROVIDER_KEYS)}, not {extra}"
    only = provider.get("only")
    if only is not None and (not isinstance(only, list) or not all(isinstance(s, str) and s for s in only)):
        return "provider.only must be an array of provider slugs"
    fallbacks = provider.get("allow_fallbacks")
    if fallbacks is not None and not isinstance(fallbacks, bool):
        return "provider.allow_fallbacks must be a boolean"
    return None


@dataclass(frozen=True, slots=True)
class Spec:
    """A create's body as checked: what a batch is made from."""

    endpoint: str
    model: str
    lines: list[tuple[str, dict[str, Any]]]
    provider: dict[str, Any] | None
    callback_url: str | None


def read_create(raw: bytes, cfg: SimConfig) -> Spec:
    """The body of `POST /batches` checked as OpenRouter checks it before its 202 (Refused otherwise)."""
    if len(raw) > cfg.batch_max_bytes:
        raise Refused(413, "Request payload too large")
    before = _keys_before_requests(raw)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Refused(400, f"Invalid JSON in request body: {exc}") from exc
    if not isinstance(body, dict):
        raise Refused(400, "Invalid JSON in request body: a batch is a JSON object")
    if "callback_url" in body and "callback_url" not in before:
        raise Refused(
            400, '"callback_url" must come before "requests" in the body (it is parsed as a stream)'
        )
    if "input" in body:
        raise Refused(400, "input file references are available to allowlisted Vertex BYOK keys only")
    unknown = sorted(set(body) - set(_TOP_LEVEL))
    if unknown:
        raise Refused(400, f"unknown fields in a batch: {unknown} (allowed: {list(_TOP_LEVEL)})")
    endpoint, model = body.get("endpoint"), body.get("model")
    if endpoint not in ENDPOINTS:
        raise Refused(400, f"endpoint must be one of {list(ENDPOINTS)}")
    if not isinstance(model, str) or not model:
        raise Refused(400, "model must be a non-empty string")
    if body.get("completion_window", "24h") != "24h":
        raise Refused(400, 'completion_window must be "24h"')
    problem = _provider_problem(body.get("provider"))
    if problem is None and body.get("callback_url") is not None:
        problem = _callback_problem(body["callback_url"])
    if problem is not None:
        raise Refused(400, problem)
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise Refused(400, "requests must be a non-empty array")
    if len(requests) > cfg.batch_max_requests:
        raise Refused(400, f"a batch holds at most {cfg.batch_max_requests} requests, not {len(requests)}")
    return Spec(
        endpoint, model, _lines(requests, endpoint, model), body.get("provider"), body.get("callback_url")
    )


def _lines(requests: list[Any], endpoint: str, model: str) -> list[tuple[str, dict[str, Any]]]:
    lines: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for number, line in enumerate(requests):
        where = f"requests[{number}]"
        if not isinstance(line, dict):
            raise Refused(400, f"{where} must be an object with custom_id and body")
        extra = sorted(set(line) - _LINE_KEYS)
        if extra:
            raise Refused(400, f"{where} holds unknown fields {extra}: a line is {{custom_id, body}}")
        custom_id, body = line.get("custom_id"), line.get("body")
        if not isinstance(custom_id, str) or not custom_id:
            raise Refused(400, f"{where}.custom_id must be a non-empty string")
        if custom_id in seen:
            raise Refused(400, f"custom_id {custom_id!r} is used twice: each line's must be unique")
        seen.add(custom_id)
        if not isinstance(body, dict):
            raise Refused(400, f"{where}.body must be an object (the endpoint's request)")
        if "model" in body and body["model"] != model:
            raise Refused(
                400,
                f"{where}.body.model is {body['model']!r}: a line's model must be the batch's ({model!r})",
            )
        if endpoint == "/v1/embeddings":
            problem = embeddings.batch_line_problem(body)
            if problem is not None:
                raise Refused(400, f"{where}: {problem}")
        lines.append((custom_id, body))
    return lines


def _late_problem(spec: Spec, priced_as: str | None, catalogue: Catalogue) -> str | None:
    """What fails the batch after its 202 (OpenRouter: "a 202 means stored, not valid"), or None."""
    if priced_as is None:
        base = spec.model.removesuffix(BATCH_SUFFIX)
        return (
            f"{spec.model} has no batch variant: only models listed with {base}{BATCH_SUFFIX} run as batches"
        )
    if spec.endpoint not in _SERVED:
        return f"{spec.endpoint} batches are not run by this simulator (only {' and '.join(_SERVED)})"
    embedding = priced_as in catalogue.embeddings
    if embedding != (spec.endpoint == "/v1/embeddings"):
        kind = "an embeddings model" if embedding else "not an embeddings model"
        return f"{spec.model} is {kind}: it cannot serve {spec.endpoint}"
    if spec.model.startswith("google/"):
        first = orjson.dumps(spec.lines[0][1].get("response_format"), option=orjson.OPT_SORT_KEYS)
        for custom_id, body in spec.lines:
            if orjson.dumps(body.get("response_format"), option=orjson.OPT_SORT_KEYS) != first:
                return f"line {custom_id!r}: every line of a Google batch must ask the same response_format"
    for custom_id, body in spec.lines:
        if b'"data:' in orjson.dumps(body.get("messages")):
            return f"line {custom_id!r}: base64 (data:) images are not accepted in batches; send image URLs"
    return None


@dataclass(slots=True, eq=False)
class Line:
    """One request of a batch: what was sent, when it is due, and its result line once answered."""

    custom_id: str
    body: dict[str, Any]
    due: float
    result: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        """Answered with a 2xx response (a non-2xx `status_code` or an `error` is a failed line)."""
        response = (self.result or {}).get("response")
        return response is not None and 200 <= response["status_code"] < 300


@dataclass(slots=True, eq=False)
class Batch:
    """A batch and where it is in its life."""

    id: str
    seq: int
    spec: Spec
    priced_as: str | None
    problem: str | None
    lines: list[Line]
    created: float
    started: float  # when validation ends
    expires: float
    finalizing_seconds: float
    cancel_seconds: float
    status: str = "validating"
    provider: str | None = None
    finalized: float | None = None
    cancel_done: float | None = None
    completes: float | None = None
    # The lines in the order they are due, and how many of them have been answered.
    order: list[Line] = field(default_factory=list)
    answered: int = 0
    expired_lines: list[Line] = field(default_factory=list)
    deleted: bool = False
    gets: int = 0
    results_inline_fetched: int = 0
    results_pages_fetched: int = 0
    cancel_requests: int = 0
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def final(self) -> bool:
        """Whether its status is terminal."""
        return self.status in TERMINAL

    def results(self) -> list[dict[str, Any]]:
        """Its result lines: none before it ends or when failed or cancelled; answered first, then expired."""
        if self.status not in ("completed", "expired"):
            return []
        return [line.result for line in (*self.order[: self.answered], *self.expired_lines) if line.result]

    def counts(self) -> dict[str, int]:
        """`request_counts`: lines answered well, lines failed (expired ones included), and all of them."""
        done = [line for line in self.order[: self.answered] if line.result]
        completed = sum(1 for line in done if line.ok)
        failed = len(done) - completed + len(self.expired_lines)
        return {"total": len(self.lines), "completed": completed, "failed": failed}

    def usage(self) -> dict[str, Any] | None:
        """The sum of the answered lines' usage, at the batch price; None before it ends or if none was billed."""
        if not self.final:
            return None
        totals = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        cost = prompt_cost = completion_cost = Decimal(0)
        billed = False
        for line in self.order[: self.answered]:
            body = ((line.result or {}).get("response") or {}).get("body")
            usage = body.get("usage") if isinstance(body, dict) else None
            if not isinstance(usage, dict):
                continue
            billed = True
            for key in totals:
                totals[key] += int(usage.get(key) or 0)
            cost += Decimal(str(usage.get("cost") or 0))
            details = usage.get("cost_details") or {}
            prompt_cost += Decimal(str(details.get("upstream_inference_prompt_cost") or 0))
            completion_cost += Decimal(str(details.get("upstream_inference_completions_cost") or 0))
        if not billed:
            return None
        return {
            **totals,
            "cost": float(cost),
            "is_byok": False,
            "cost_details": {
                "upstream_inference_cost": None,
                "upstream_inference_prompt_cost": float(prompt_cost),
                "upstream_inference_completions_cost": float(completion_cost),
            },
        }

    def cost(self) -> Decimal:
        """What the batch charges."""
        usage = self.usage()
        return Decimal(str(usage["cost"])) if usage else Decimal(0)

    def object(self, results: bool) -> dict[str, Any]:
        """The batch object; `results` only when asked for (never in lists) and the batch is terminal."""
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.spec.endpoint,
            "model": self.spec.model,
            "completion_window": "24h",
            "status": self.status,
            "created_at": int(self.created),
            "finalized_at": None if self.finalized is None else int(self.finalized),
            "expires_at": int(self.expires),
            "provider": self.provider,
            "request_counts": self.counts(),
            "usage": self.usage(),
            "results": self.results() if results and self.final else None,
            "error": {"message": self.problem} if self.status == "failed" and self.problem else None,
        }

    def deletion(self) -> dict[str, Any]:
        """`DELETE`'s answer: `upstream` only when a provider was assigned."""
        deletion: dict[str, Any] = {"openrouter": "deleted"}
        if self.provider is not None:
            deletion["upstream"] = {"provider": self.provider, "status": "deleted"}
        return {"id": self.id, "object": "batch", "deletion": deletion}

    def view(self) -> dict[str, Any]:
        """What `GET /_sim/batches` shows of it: the test-side view, lines and counters included."""
        return {
            **self.object(results=False),
            "priced_as": self.priced_as,
            "deleted": self.deleted,
            "gets": self.gets,
            "results_inline_fetched": self.results_inline_fetched,
            "results_pages_fetched": self.results_pages_fetched,
            "cancel_requests": self.cancel_requests,
            "callback_url": self.spec.callback_url,
            "callbacks": self.callbacks,
            "lines": [_line_view(line) for line in self.lines],
        }

    def next_event(self) -> float:
        """When its state next changes by itself (inf: never)."""
        if self.status == "validating":
            return self.started
        if self.status == "cancelling":
            return self.cancel_done or math.inf
        if self.status == "finalizing":
            return self.completes or math.inf
        if self.status == "in_progress":
            upcoming = self.order[self.answered].due if self.answered < len(self.order) else math.inf
            return min(upcoming, self.expires)
        return math.inf


def _line_view(line: Line) -> dict[str, Any]:
    result = line.result or {}
    response, error = result.get("response"), result.get("error")
    return {
        "custom_id": line.custom_id,
        "body": line.body,
        "answered": line.result is not None,
        "status_code": None if response is None else response["status_code"],
        "error": None if error is None else error.get("type"),
    }


Answer = Callable[[Batch, Line], LineAnswer]


def _encode_cursor(batch_id: str, offset: int) -> str:
    return base64.urlsafe_b64encode(f"{batch_id}:{offset}".encode()).decode().rstrip("=")


def _decode_cursor(batch_id: str, cursor: str) -> int | None:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        owner, _, offset = text.rpartition(":")
        return int(offset) if owner == batch_id and int(offset) >= 0 else None
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


def _bounded(value: str | None, bounds: tuple[int, int, int], name: str) -> int:
    low, high, default = bounds
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise Refused(400, f"{name} must be an integer from {low} to {high}")
    return number


def _moment(value: str, name: str) -> float:
    """An ISO 8601 time (as the docs' example) or unix seconds."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError as exc:
        raise Refused(400, f"{name} must be an ISO 8601 time (2026-08-20T00:00:00Z) or unix seconds") from exc


class BatchStore:
    """Every batch of this simulator, newest last, and the task that moves each through its life."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.batches: dict[str, Batch] = {}
        self.seq = 0

    # --- making and driving ----------------------------------------------------------------------------
    def create(self, spec: Spec, cfg: SimConfig, catalogue: Catalogue, now: float | None = None) -> Batch:
        """Store a checked batch and start its life; the checks left for after the 202 decide its fate."""
        now = time.time() if now is None else now
        speed = cfg.speed if cfg.speed > 0 else 1.0
        priced_as = catalogue.batch_variant(spec.model)
        started = now + cfg.batch_validating_seconds / speed
        running = cfg.batch_in_progress_seconds / speed
        expires = now + cfg.batch_window_seconds / speed
        if cfg.batch_expire:
            expires = started + running / 2
        self.seq += 1
        batch_id = f"batch_{uuid.uuid4().hex[:24]}"
        lines = [Line(custom_id, body, math.inf) for custom_id, body in spec.lines]
        # Lines run concurrently and finish in any order: a shuffle seeded by the batch, evenly spread.
        order = list(lines)
        random.Random(batch_id).shuffle(order)
        for number, line in enumerate(order):
            line.due = started + running * (number + 1) / len(order)
        batch = Batch(
            id=batch_id,
            seq=self.seq,
            spec=spec,
            priced_as=priced_as,
            problem=_late_problem(spec, priced_as, catalogue),
            lines=lines,
            created=now,
            started=started,
            expires=max(expires, started),
            finalizing_seconds=cfg.batch_finalizing_seconds / speed,
            cancel_seconds=cfg.batch_cancel_seconds / speed,
            order=order,
        )
        self.batches[batch_id] = batch
        batch.task = asyncio.get_running_loop().create_task(self._drive(batch))
        return batch

    def advance(self, batch: Batch, now: float | None = None) -> None:
        """Bring the batch up to `now`: end its validation, answer the lines now due, end it when its time is."""
        now = time.time() if now is None else now
        if batch.final:
            return
        if batch.status == "validating":
            if now < batch.started:
                return
            if batch.problem is not None:
                self._end(batch, "failed", batch.started)
                return
            only = (batch.spec.provider or {}).get("only")
            batch.provider = only[0] if only else _PROVIDER
            batch.status = "in_progress"
        if batch.status == "cancelling":
            if batch.cancel_done is not None and now >= batch.cancel_done:
                self._end(batch, "cancelled", batch.cancel_done)
            return
        if batch.status == "in_progress":
            horizon = min(now, batch.expires)
            while batch.answered < len(batch.order) and batch.order[batch.answered].due <= horizon:
                self._answer(batch, batch.order[batch.answered])
                batch.answered += 1
            if batch.answered == len(batch.order):
                batch.status = "finalizing"
                batch.completes = batch.order[-1].due + batch.finalizing_seconds
            elif now >= batch.expires:
                self._expire(batch)
                return
        if batch.status == "finalizing" and batch.completes is not None and now >= batch.completes:
            self._end(batch, "completed", batch.completes)

    def _answer(self, batch: Batch, line: Line) -> None:
        try:
            answer = self.answer(batch, line)
        except Exception as exc:  # one line's trouble must not stop the batch's clock
            log.exception("batch_line_failed", batch=batch.id, custom_id=line.custom_id)
            answer = LineAnswer(0, None, {"type": "server_error", "message": str(exc), "param": None})
        response = None
        if answer.error is None:
            response = {
                "status_code": answer.status,
                "request_id": f"request_{uuid.uuid4().hex[:20]}",
                "body": answer.body,
            }
        line.result = {
            "id": f"batch_req_{uuid.uuid4().hex[:20]}",
            "custom_id": line.custom_id,
            "response": response,
            "error": answer.error,
        }

    def _expire(self, batch: Batch) -> None:
        unanswered = batch.order[batch.answered :]
        for line in unanswered:
            line.result = {
                "id": f"batch_req_{uuid.uuid4().hex[:20]}",
                "custom_id": line.custom_id,
                "response": None,
                "error": {
                    "type": "batch_expired",
                    "message": "This request could not be executed before the batch expired.",
                    "param": None,
                },
            }
        # Expired lines follow the answered ones, in the order they were sent.
        left = {id(line) for line in unanswered}
        batch.expired_lines = [line for line in batch.lines if id(line) in left]
        self._end(batch, "expired", batch.expires)

    def _end(self, batch: Batch, status: str, when: float) -> None:
        batch.status = status
        batch.finalized = when
        batch.wake.set()

    async def _drive(self, batch: Batch) -> None:
        """Move the batch along at its times (readers advance it too), then send its callback."""
        while True:
            self.advance(batch)
            if batch.final:
                break
            batch.wake.clear()
            delay = max(0.0, batch.next_event() - time.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(batch.wake.wait(), None if math.isinf(delay) else delay)
        if batch.spec.callback_url is not None:
            await self._deliver(batch, batch.spec.callback_url)

    async def _deliver(self, batch: Batch, url: str) -> None:
        # Invented payload: OpenRouter names the events (batch.completed, .failed, .cancelled, .expired) but
        # documents no payload, signature or retries.
        payload = {"type": f"batch.{batch.status}", "data": {"id": batch.id}}
        timeout = aiohttp.ClientTimeout(total=CALLBACK_TIMEOUT_SECONDS)
        for attempt in range(CALLBACK_ATTEMPTS):
            record: dict[str, Any] = {"at": time.time(), "payload": payload}
            try:
                async with (
                    aiohttp.ClientSession(timeout=timeout) as session,
                    session.post(
                        url, data=orjson.dumps(payload), headers={"Content-Type": "application/json"}
                    ) as reply,
                ):
                    record["status"] = reply.status
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                record["error"] = f"{type(exc).__name__}: {exc}"
            batch.callbacks.append(record)
            if 200 <= record.get("status", 0) < 300:
                return
            log.warning("batch_callback_failed", batch=batch.id, url=url, attempt=attempt + 1, **record)
            if attempt + 1 < CALLBACK_ATTEMPTS:
                await asyncio.sleep(0.5 * 2**attempt)
        log.warning("batch_callback_given_up", batch=batch.id, url=url, attempts=CALLBACK_ATTEMPTS)

    # --- reading and steering --------------------------------------------------------------------------
    def find(self, batch_id: str) -> Batch | None:
        """The batch by id, brought up to now; None if unknown or deleted."""
        batch = self.batches.get(batch_id)
        if batch is None or batch.deleted:
            return None
        self.advance(batch)
        return batch

    def cancel(self, batch: Batch, now: float | None = None) -> dict[str, Any]:
        """Ask for a cancel: the batch as it is now; it stops answering and is `cancelled` once confirmed."""
        now = time.time() if now is None else now
        self.advance(batch, now)
        before = batch.object(results=False)
        batch.cancel_requests += 1
        if batch.status in ("validating", "in_progress"):
            batch.status = "cancelling"
            batch.cancel_done = now + batch.cancel_seconds
            batch.wake.set()
        return before

    def delete(self, batch: Batch) -> dict[str, Any]:
        """Delete a terminal batch: the API forgets it (404 from now on); the test view keeps it, marked."""
        batch.deleted = True
        return batch.deletion()

    def listing(
        self,
        limit: str | None,
        after: str | None,
        statuses: Iterable[str],
        created_after: str | None,
        created_before: str | None,
    ) -> dict[str, Any]:
        """`GET /batches`: newest first, filtered, `limit` of them after the batch `after`."""
        size = _bounded(limit, _LIST_LIMIT, "limit")
        wanted = set(statuses)
        unknown = sorted(wanted - set(STATUSES))
        if unknown:
            raise Refused(400, f"status must be among {list(STATUSES)}, not {unknown}")
        since = None if created_after is None else _moment(created_after, "created_after")
        until = None if created_before is None else _moment(created_before, "created_before")
        start = math.inf
        if after is not None:
            if after not in self.batches:
                raise Refused(400, f"after names no batch: {after!r}")
            start = self.batches[after].seq
        chosen: list[Batch] = []
        more = False
        for batch in sorted(self.batches.values(), key=lambda b: b.seq, reverse=True):
            if batch.deleted or batch.seq >= start:
                continue
            self.advance(batch)
            if wanted and batch.status not in wanted:
                continue
            if (since is not None and not batch.created > since) or (
                until is not None and not batch.created < until
            ):
                continue
            if len(chosen) == size:
                more = True
                break
            chosen.append(batch)
        data = [b.object(results=False) for b in chosen]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": more,
        }

    def page(self, batch: Batch, limit: str | None, cursor: str | None) -> dict[str, Any]:
        """A page of a terminal batch's results; the same `cursor` gives the same page."""
        size = _bounded(limit, _RESULTS_LIMIT, "limit")
        offset = 0
        if cursor is not None:
            found = _decode_cursor(batch.id, cursor)
            if found is None:
                raise Refused(400, "cursor is not one this batch's results gave")
            offset = found
        results = batch.results()
        end = offset + size
        more = end < len(results)
        return {
            "object": "list",
            "data": results[offset:end],
            "has_more": more,
            "next_cursor": _encode_cursor(batch.id, end) if more else None,
        }

    def views(self) -> list[dict[str, Any]]:
        """Every batch, deleted ones too, oldest first, as `GET /_sim/batches` shows them."""
        for batch in self.batches.values():
            self.advance(batch)
        return [batch.view() for batch in self.batches.values()]

    def clear(self) -> None:
        """Forget every batch, stopping their clocks and callbacks."""
        for batch in self.batches.values():
            if batch.task is not None:
                batch.task.cancel()
        self.batches.clear()
