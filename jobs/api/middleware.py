"""What wraps every request: its id, and its body kept within bounds and read to its end before an early answer.

Each request gets an id (`req_` and 32 hex digits, as OpenAI's), answered in `x-request-id` and bound into every
log line logged while it is served, so the line of a failed call is found from its answer. An incoming
`X-Request-Id` (a proxy's, say) is not echoed: it is logged beside ours as `client_request_id`, so the id a
client is given is always one this server made and cannot collide with another's.

A JSON body over its limit is refused while it is read (never held whole); an upload has its own, larger
limit. When the answer comes before the body was read (a 401 to an upload, a 413), the rest of the body is
read and dropped first, for a while: a client still sending would otherwise meet a reset connection and
never see the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from contextvars import ContextVar
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobs.core.errors import TooLarge

__all__ = [
    "JSON_BODY_MAX_BYTES",
    "REQUEST_ID_HEADER",
    "UPLOAD_FRAMING_BYTES",
    "BodyGuard",
    "RequestIds",
    "current_request_id",
    "new_request_id",
]

# A batch's create body is a few hundred bytes; metadata at its largest is about 10 KB.
JSON_BODY_MAX_BYTES = 1024 * 1024
# Room for the multipart framing around an upload's file.
UPLOAD_FRAMING_BYTES = 64 * 1024
# How long an answer waits for the rest of a body it does not need.
_DRAIN_SECONDS = 30.0

REQUEST_ID_HEADER = "x-request-id"
# An incoming X-Request-Id is logged only when it looks like an id: printable ASCII, this long at most.
_CLIENT_ID_CHARS = 128

_request_id: ContextVar[str | None] = ContextVar("orbatch_request_id", default=None)


def new_request_id() -> str:
    """A new request id: `req_` and 32 hex digits, as OpenAI's."""
    return f"req_{secrets.token_hex(16)}"


def current_request_id() -> str | None:
    """The id of the request being served, None outside one."""
    return _request_id.get()


def _client_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER.encode():
            shown: str = value.decode("latin-1")
            if 0 < len(shown) <= _CLIENT_ID_CHARS and shown.isascii() and shown.isprintable():
                return shown
    return None


class RequestIds:
    """ASGI middleware around everything else (the last-resort 500 included): each HTTP request's id, in its
    answer's `x-request-id` and in every log line logged while it is served."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        header = (REQUEST_ID_HEADER.encode(), request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        bound: dict[str, str] = {"request_id": request_id}
        client_id = _client_request_id(scope)
        if client_id is not None:
            bound["client_request_id"] = client_id
        token = _request_id.set(request_id)
        try:
            with structlog.contextvars.bound_contextvars(**bound):
                await self.app(scope, receive, send_with_id)
        finally:
            _request_id.reset(token)


class BodyGuard:
    """ASGI middleware: bounds each request's body and drains what the app left unread."""

    def __init__(self, app: ASGIApp, max_upload_bytes: int, idle_seconds: float) -> None:
        self.app = app
        self.max_upload_bytes = max_upload_bytes
        self.idle_seconds = idle_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["method"] == "POST" and scope["path"].rstrip("/") == "/v1/files"
        limit = self.max_upload_bytes + UPLOAD_FRAMING_BYTES if upload else JSON_BODY_MAX_BYTES
        body = _Body(receive, limit, _declared_length(scope), self.idle_seconds)
        await self.app(scope, body.receive, _Sender(send, body).send)


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            with contextlib.suppress(ValueError):
                return int(value)
    return None


class _Body:
    """Counts what the app reads of the body; TooLarge past the limit, declared or sent."""

    def __init__(self, receive: Receive, limit: int, declared: int | None, idle: float) -> None:
        self._receive = receive
        self.idle = idle
        self.limit = limit
        self.declared = declared
        self.received = 0
        self.done = False

    def _too_large(self) -> TooLarge:
        return TooLarge(
            f"the request body is larger than this endpoint's limit of {self.limit} bytes",
            code="request_too_large",
        )

    async def receive(self) -> Message:
        if self.declared is not None and self.declared > self.limit:
            raise self._too_large()
        message = await self._raw()
        if self.received > self.limit:
            raise self._too_large()
        return message

    async def _raw(self) -> Message:
        message: dict[str, Any] = dict(await self._receive())
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.done = not message.get("more_body", False)
        else:
            self.done = True
        return message

    async def drain(self) -> None:
        """Read and drop the rest of the body, up to a bound in time and bytes; a stalled body is left."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_DRAIN_SECONDS):
                while not self.done and self.received <= self.limit:
                    await asyncio.wait_for(self._raw(), self.idle)


class _Sender:
    def __init__(self, send: Send, body: _Body) -> None:
        self._send = send
        self._body = body

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start" and not self._body.done:
            await self._body.drain()
        await self._send(message)
