"""uvicorn's httptools protocol with bounds on a request's line and headers, and its refusals in OpenAI's error
shape.

httptools holds a URL or a header until its end, however long: a client could fill the server's memory with
one. Here the bytes a request sends before its headers are complete are counted: headers past
MAX_REQUEST_HEAD_BYTES are answered 431 and the connection closed. A URL past MAX_REQUEST_LINE_BYTES, which
httptools cannot parse, is answered here too: a 400 naming its parameter when one of those read so far is one
the app would refuse (a 100 kB cursor: the same check, inputs.check_query), else 414. Requests the parser
cannot read get OpenAI's error body too, instead of uvicorn's plain text, and each refusal its `x-request-id`
and a log line.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Literal

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from jobs.api.errors import error_response
from jobs.api.inputs import check_query
from jobs.api.middleware import REQUEST_ID_HEADER, new_request_id
from jobs.core.errors import BadInput, HeadersTooLarge, OrbatchError, UriTooLong
from jobs.core.logs import get_logger

__all__ = ["MAX_REQUEST_HEAD_BYTES", "MAX_REQUEST_LINE_BYTES", "GuardedHttpToolsProtocol"]

log = get_logger(__name__)

# A request's headers: as much as common servers take (nginx 32 KB, Node 16 KB).
MAX_REQUEST_HEAD_BYTES = 32 * 1024
# Its URL: the longest httptools parses (its offsets are 16 bits), far more than any parameter the app takes.
MAX_REQUEST_LINE_BYTES = 65535

# How long, and how much, a refused connection is read and dropped before it is closed.
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 1024 * 1024


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop reading a request whose line or headers are over their limit."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that refuses an oversized request head with 431, and malformed requests with 400."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The URL and headers parsed so far, and the raw bytes received while the head is still incomplete.
        self._url_bytes = self._header_bytes = self._raw_head_bytes = 0
        self._in_head = True
        self._oversized: Literal["line", "headers"] | None = None
        # After a refusal: bytes still arriving are dropped for a moment before the connection closes.
        self._lingering = 0

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._url_bytes = self._header_bytes = self._raw_head_bytes = 0
        self._in_head = True

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._oversized = self._over()
        if self._oversized is not None:
            # The parser turns this into an HttpParserError, which uvicorn answers with send_400_response.
            raise _HeadTooLarge
        super().on_headers_complete()

    def _over(self) -> Literal["line", "headers"] | None:
        if self._url_bytes > MAX_REQUEST_LINE_BYTES:
            return "line"
        if self._header_bytes > MAX_REQUEST_HEAD_BYTES:
            return "headers"
        return None

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._lingering += len(data)
            if self._lingering > _LINGER_BYTES:
                self.transport.close()
            return
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            # A URL or a header that never ends: the parser would hold all of it.
            self._raw_head_bytes += len(data)
            self._oversized = self._over()
            if (
                self._oversized is None
                and self._raw_head_bytes > MAX_REQUEST_LINE_BYTES + MAX_REQUEST_HEAD_BYTES
            ):
                self._oversized = "headers"
            if self._oversized is not None:
                self.send_400_response("")

    def send_400_response(self, msg: str) -> None:
        if self._lingering:
            return
        if self._oversized == "line":
            self._refuse(self._line_refusal())
        elif self._oversized == "headers":
            self._refuse(
                HeadersTooLarge(
                    f"the request's headers are larger than {MAX_REQUEST_HEAD_BYTES} bytes",
                    code="headers_too_large",
                )
            )
        else:
            self._refuse(BadInput(f"{msg} (not a valid HTTP/1.1 request)", code="invalid_http_request"))

    def _line_refusal(self) -> OrbatchError:
        """What a URL too long to parse is answered: the app's 400 for a parameter it would refuse, else 414."""
        _, _, query = bytes(self.url).partition(b"?")
        try:
            check_query(query.split(b"#", 1)[0])
        except BadInput as exc:
            return exc
        return UriTooLong(f"the URL is longer than {MAX_REQUEST_LINE_BYTES} bytes", code="uri_too_long")

    def _refuse(self, error: OrbatchError) -> None:
        response = error_response(error)
        request_id = new_request_id()
        log.info("request refused", request_id=request_id, status=error.http_status, code=error.code)
        status = HTTPStatus(response.status_code)
        head = [f"HTTP/1.1 {status.value} {status.phrase}".encode()]
        head += [name + b": " + value for name, value in response.raw_headers]
        head.append(f"{REQUEST_ID_HEADER}: {request_id}".encode())
        head.append(b"connection: close")
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + bytes(response.body))
        # Closing with unread bytes would reset the connection, and a client still sending would lose the
        # answer: half-close, read and drop what still comes for a moment, then close (a lingering close).
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._lingering = 1
        self.loop.call_later(_LINGER_SECONDS, self.transport.close)
