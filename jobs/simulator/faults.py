"""Scripted failures: rules matched on the prompt, chaos by chance, outages, and the answer each rule kind gives.

**Rules** (`POST /_sim/config {"rules": [...]}`) script the answer to requests whose last user message contains
`match`, `times` times (-1: always), after `delay` seconds: `status` (an error answer: `status`, `code`,
`message`, `headers`, `metadata`, `reset_in_seconds` for a 429), `error_in_200`, `top_level_error`, `not_json`,
`reply` (a 200 with `content`), `hang` (nothing for `seconds`, default an hour, then a 504), `reset` (a TCP RST),
`trickle` (a 200 with its headers at once, then a keep-alive every `interval` seconds, default 0.3: a space, as
gateways send before a JSON body, or with `sse: true` an `: OPENROUTER PROCESSING` comment as OpenRouter sends
on streams; for `seconds`, default forever, then the completion) and `big` (a 200 whose body, a valid
completion, is `size` bytes).

**The same rules elsewhere.** `POST /embeddings` is matched on its input's text: `status`, `not_json`, `hang`,
`reset` and `top_level_error` answer as above (a `status` rule with no message says the spec's example message
for its status, e.g. 529 "Provider returned error"), any other kind answers normally. A rule with `route` (one
of `config.ROUTES`: "embeddings", "batches" for every batch route, or one of them, "batches.create"...) fails
every call to that route, matched on nothing else; its kinds are `status`, `not_json`, `hang` and `reset`.
**Batch lines** are matched on their text as live calls are, or by `custom_id` (a rule with `custom_id` answers
that line alone and never a live call); each kind becomes what a result line can say (`line_answer`):
`status` a line whose `response.status_code` is that status with an error body, `line_error` (lines only) a
line whose `error` is `{"type": code or "server_error", "message", "param": null}`, `reset` such an error
line too, `hang` a 504 line, `not_json` a line whose body is an HTML string, `top_level_error`,
`error_in_200`, `reply` and `big` the 200 they give live; `trickle` answers normally.

**Outage.** `outage_status: 503` makes every call fail with that status until it is set back to null. Without
`outage_provider_name` it is OpenRouter itself that is down: `/chat/completions`, `/models` and `/key` all answer
it, with no provider named. With `outage_provider_name: "X"` the providers behind it are: OpenRouter checks the
call as usual (key, models, free-tier limits) and answers the error with `error.metadata.provider_name = "X"`.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from aiohttp import web

from jobs.simulator.config import Rule, SimConfig
from jobs.simulator.replies import SPEC_MESSAGES, error_body, error_response, json_response

__all__ = [
    "Complete",
    "LineAnswer",
    "Record",
    "answer",
    "answer_plain",
    "line_answer",
    "openrouter_down",
    "pick",
    "pick_route",
    "providers_down",
]


class Complete(Protocol):
    """Builds the completion of the call being answered (and bills it) with this content."""

    def __call__(
        self, content: str, finish: str = "stop", choice_error: dict[str, Any] | None = None
    ) -> dict[str, Any]: ...


class Record(Protocol):
    """Records the call being answered: its status, its outcome, and the model that answered."""

    def __call__(self, status: int, outcome: str, model: str | None = None) -> None: ...


def openrouter_down(cfg: SimConfig) -> web.Response | None:
    """The answer of an OpenRouter that is down as a whole, or None."""
    if cfg.outage_status is None or cfg.outage_provider_name is not None:
        return None
    return error_response(cfg.outage_status, "simulated outage: OpenRouter is unavailable")


def providers_down(cfg: SimConfig) -> web.Response | None:
    """The answer of an OpenRouter whose providers (named) are down, or None."""
    if cfg.outage_status is None or cfg.outage_provider_name is None:
        return None
    return error_response(
        cfg.outage_status,
        "Provider returned error",
        metadata={"provider_name": cfg.outage_provider_name, "raw": "simulated outage"},
    )


def _matches(rule: Rule, text: str, custom_id: str | None) -> bool:
    if rule.times == 0 or rule.route is not None or rule.match not in text:
        return False
    if custom_id is None:  # a live call
        return rule.custom_id is None and rule.kind != "line_error"
    return rule.custom_id is None or rule.custom_id == custom_id


def pick(cfg: SimConfig, text: str, custom_id: str | None = None) -> Rule | None:
    """The rule that answers a call (or, given its `custom_id`, a batch line): chaos by chance first, else the
    first rule matching `text` with answers left (one of which it takes); None for a normal answer."""
    draw = random.random()
    if draw < cfg.chaos_500:
        rule: Rule | None = Rule(match="", kind="status", status=500, message="chaos: internal error")
    elif draw < cfg.chaos_500 + cfg.chaos_error_in_200:
        rule = Rule(match="", kind="error_in_200", message="chaos: provider failed mid-answer")
    elif draw < cfg.chaos_500 + cfg.chaos_error_in_200 + cfg.chaos_hang:
        rule = Rule(match="", kind="hang", seconds=cfg.chaos_hang_seconds)
    else:
        rule = next((r for r in cfg.rules if _matches(r, text, custom_id)), None)
    if rule is not None and rule.times > 0:
        rule.times -= 1
    return rule


def pick_route(cfg: SimConfig, route: str) -> Rule | None:
    """The first rule for `route` ("batches.get"...; "batches" covers them all) with answers left, taking one."""
    for rule in cfg.rules:
        if (
            rule.times != 0
            and rule.route is not None
            and (route == rule.route or route.startswith(rule.route + "."))
        ):
            if rule.times > 0:
                rule.times -= 1
            return rule
    return None


def _provider_error(rule: Rule) -> dict[str, Any]:
    return {"code": rule.code or 502, "message": rule.message or "Provider returned error"}


def _message(rule: Rule, spec: bool) -> str:
    if rule.message:
        return rule.message
    if spec and rule.status in SPEC_MESSAGES:
        return SPEC_MESSAGES[rule.status]
    return f"simulated HTTP {rule.status}"


def _scripted_error(rule: Rule, spec: bool = False) -> web.Response:
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
    return error_response(rule.status, _message(rule, spec), rule.code, metadata, headers)


async def answer(
    rule: Rule, request: web.Request, model: str, text: str, complete: Complete, record: Record
) -> web.StreamResponse:
    """Answer a call as `rule` says (after its delay), recording the call as answered."""
    if rule.delay > 0:
        await asyncio.sleep(rule.delay)
    if rule.kind == "reply":
        record(200, "ok", model)
        return json_response(complete(rule.content or ""))
    if rule.kind == "status":
        record(rule.status, "rule")
        return _scripted_error(rule)
    if rule.kind == "error_in_200":
        record(200, "error_in_200", model)
        return json_response(complete("", finish="error", choice_error=_provider_error(rule)))
    if rule.kind == "top_level_error":
        record(200, "top_level_error")
        return json_response({"error": _provider_error(rule), "user_id": "user_sim"})
    if rule.kind == "not_json":
        record(rule.status, "not_json")
        return web.Response(
            status=rule.status, text="<html><body>502 Bad Gateway</body></html>", content_type="text/html"
        )
    if rule.kind == "hang":
        record(0, "hang")
        await asyncio.sleep(3600.0 if rule.seconds is None else rule.seconds)
        return error_response(504, "simulated hang ended")
    if rule.kind == "trickle":
        record(200, "trickle", model)
        return await _trickle(rule, request, text, complete)
    if rule.kind == "big":
        record(200, "big", model)
        return web.Response(body=_big_body(rule.size, complete), content_type="application/json")
    # reset: drop the connection with a RST, as a crashed proxy does
    record(0, "reset")
    _reset(request)
    raise asyncio.CancelledError


async def answer_plain(
    rule: Rule, request: web.Request, record: Record, normal: Callable[[], Any] | None = None
) -> web.StreamResponse:
    """Answer a call of a route that gives no completion (embeddings, the batch routes) as `rule` says: a
    `status` rule with the spec's message for its status; a kind that needs a completion answers `normal()`."""
    if rule.delay > 0:
        await asyncio.sleep(rule.delay)
    if rule.kind == "status" or (normal is None and rule.kind not in ("not_json", "hang", "reset")):
        record(rule.status, "rule")
        return _scripted_error(rule, spec=True)
    if rule.kind == "not_json":
        record(rule.status, "not_json")
        return web.Response(
            status=rule.status, text="<html><body>502 Bad Gateway</body></html>", content_type="text/html"
        )
    if rule.kind == "hang":
        record(0, "hang")
        await asyncio.sleep(3600.0 if rule.seconds is None else rule.seconds)
        return error_response(504, "simulated hang ended")
    if rule.kind == "reset":
        record(0, "reset")
        _reset(request)
        raise asyncio.CancelledError
    if rule.kind == "top_level_error":
        record(200, "top_level_error")
        return json_response({"error": _provider_error(rule), "user_id": "user_sim"})
    assert normal is not None
    record(200, "ok")
    return json_response(normal())


@dataclass(frozen=True, slots=True)
class LineAnswer:
    """What a batch line's result says: its response's status code and body, or (`error` set) no response."""

    status: int
    body: Any
    error: dict[str, Any] | None = None


def _line_error(kind: str, message: str) -> LineAnswer:
    return LineAnswer(0, None, {"type": kind, "message": message, "param": None})


def line_answer(rule: Rule, complete: Complete | None, normal: Callable[[], Any]) -> LineAnswer:
    """A batch line answered as `rule` says (see the module's docstring); `complete` is None for an embeddings
    line, whose kinds that need a completion answer `normal()`."""
    if rule.kind == "line_error":
        return _line_error(
            str(rule.code or "server_error"), rule.message or "The provider failed this request."
        )
    if rule.kind == "reset":
        return _line_error("server_error", "The connection to the provider was reset.")
    if rule.kind == "status":
        return LineAnswer(
            rule.status, error_body(rule.status, _message(rule, True), rule.code, rule.metadata)
        )
    if rule.kind == "hang":
        return LineAnswer(504, error_body(504, "simulated hang ended"))
    if rule.kind == "not_json":
        return LineAnswer(rule.status, "<html><body>502 Bad Gateway</body></html>")
    if rule.kind == "top_level_error":
        return LineAnswer(200, {"error": _provider_error(rule), "user_id": "user_sim"})
    if complete is None or rule.kind == "trickle":
        return LineAnswer(200, normal())
    if rule.kind == "reply":
        return LineAnswer(200, complete(rule.content or ""))
    if rule.kind == "error_in_200":
        return LineAnswer(200, complete("", finish="error", choice_error=_provider_error(rule)))
    return LineAnswer(200, complete("x" * rule.size))  # big


async def _trickle(rule: Rule, request: web.Request, text: str, complete: Complete) -> web.StreamResponse:
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
        completion = complete(content)
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


def _big_body(size: int, complete: Complete) -> bytes:
    """A completion of exactly `size` bytes (at least its fields' own size), its content padded."""
    completion = complete("x" * size)
    overhead = len(orjson.dumps(completion)) - size
    completion["choices"][0]["message"]["content"] = "x" * max(0, size - overhead)
    return orjson.dumps(completion)


def _reset(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
