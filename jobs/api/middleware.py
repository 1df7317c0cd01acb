"""Request bodies kept within bounds, and read to their end before an early answer.

A JSON body over its limit is refused while it is read (never held whole); an upload has its own, larger
limit. When the answer comes before the body was read (a 401 to an upload, a 413), the rest of the body is
read and dropped first, for a while: a client still sending would otherwise meet a reset connection and
never see the error.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobs.core.errors import TooLarge

__all__ = ["JSON_BODY_MAX_BYTES", "UPLOAD_FRAMING_BYTES", "BodyGuard"]

# A batch's create body is a few hundred bytes; metadata at its largest is about 10 KB.
JSON_BODY_MAX_BYTES = 1024 * 1024
# Room for the multipart framing around an upload's file.
UPLOAD_FRAMING_BYTES = 64 * 1024
# How long an answer waits for the rest of a body it does not need.
_DRAIN_SECONDS = 30.0


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
