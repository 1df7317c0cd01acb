"""uvicorn's httptools protocol with a bound on a request's head, and its refusals in OpenAI's error shape.

httptools holds a header until its end, however long: a client could fill the server's memory with one
header. Here the bytes a request sends before its headers are complete are counted, and past
MAX_REQUEST_HEAD_BYTES the request is answered 431 and the connection closed. Requests the parser cannot
read get OpenAI's error body too, instead of uvicorn's plain text.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from jobs.api.errors import error_response
from jobs.core.errors import BadInput, HeadersTooLarge, OrbatchError

__all__ = ["GuardedHttpToolsProtocol"]

# A request's line and headers together: as much as common servers take (nginx 32 KB, Node 16 KB). The HTTP
# parser would otherwise hold a header of any length in memory.
MAX_REQUEST_HEAD_BYTES = 32 * 1024

# How long, and how much, a refused connection is read and dropped before it is closed.
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 1024 * 1024


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop reading a request whose head is over the limit."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that refuses an oversized request head with 431, and malformed requests with 400."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The URL and headers parsed so far, and the raw bytes received while the head is still incomplete.
        self._head_bytes = 0
        self._raw_head_bytes = 0
        self._in_head = True
        self._oversized = False
        # After a refusal: bytes still arriving are dropped for a moment before the connection closes.
        self._lingering = 0

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = self._raw_head_bytes = 0
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        self._head_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_bytes > MAX_REQUEST_HEAD_BYTES:
            # The parser turns this into an HttpParserError, which uvicorn answers with send_400_response.
            self._oversized = True
            raise _HeadTooLarge
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._lingering += len(data)
            if self._lingering > _LINGER_BYTES:
                self.transport.close()
            return
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            # A header that never ends: the parser would hold all of it.
            self._raw_head_bytes += len(data)
            if self._raw_head_bytes > MAX_REQUEST_HEAD_BYTES:
                self._oversized = True
                self.send_400_response("")

    def send_400_response(self, msg: str) -> None:
        if self._lingering:
            return
        if self._oversized:
            self._refuse(
                HeadersTooLarge(
                    f"the request line and headers are larger than {MAX_REQUEST_HEAD_BYTES} bytes",
                    code="headers_too_large",
                )
            )
        else:
            self._refuse(BadInput(f"{msg} (not a valid HTTP/1.1 request)", code="invalid_http_request"))

    def _refuse(self, error: OrbatchError) -> None:
        response = error_response(error)
        status = HTTPStatus(response.status_code)
        head = [f"HTTP/1.1 {status.value} {status.phrase}".encode()]
        head += [name + b": " + value for name, value in response.raw_headers]
        head.append(b"connection: close")
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + bytes(response.body))
        # Closing with unread bytes would reset the connection, and a client still sending would lose the
        # answer: half-close, read and drop what still comes for a moment, then close (a lingering close).
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._lingering = 1
        self.loop.call_later(_LINGER_SECONDS, self.transport.close)
