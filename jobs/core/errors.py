"""One exception hierarchy for what orbatch reports to a user; each branch carries its exit and HTTP status.

The CLI turns any `OrbatchError` into its message and exit status in one place (`jobs.cli.app.main`), and the HTTP
API into an OpenAI-shaped error with its HTTP status in one place: a new error only picks its branch.
"""

from __future__ import annotations

from typing import ClassVar

from jobs.core.constants import EXIT_INTERRUPTED, EXIT_STOPPED

__all__ = [
    "BadInput",
    "Conflict",
    "Forbidden",
    "HeadersTooLarge",
    "Interrupted",
    "MethodNotAllowed",
    "NeedsPerson",
    "NotFound",
    "OrbatchError",
    "RateLimited",
    "RequestTimeout",
    "ServiceUnavailable",
    "SettingsError",
    "TooLarge",
    "Unauthorized",
    "UnsupportedMediaType",
    "UriTooLong",
]


class OrbatchError(Exception):
    """Something orbatch reports to a user; the message says what went wrong and where."""

    # The process exit status a command ends with.
    exit_status: ClassVar[int] = 1
    # The HTTP status and OpenAI error `type` the API answers with.
    http_status: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        details: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        # OpenAI's machine-readable `code` and the parameter it concerns, where one applies.
        self.code = code
        self.param = param
        # Lines shown before the message (the first bad lines of a file, say).
        self.details = details

    def __str__(self) -> str:
        return self.message

    def headers(self) -> dict[str, str]:
        """HTTP headers the API answers this error with (Retry-After, say); none by default."""
        return {}


class BadInput(OrbatchError):
    """Input the user can fix: a file's lines, an option, a template, a request body."""

    exit_status = 2
    http_status = 400
    error_type = "invalid_request_error"


class SettingsError(BadInput):
    """The environment's configuration cannot be used: the message names the variable."""


class NotFound(BadInput):
    """No such batch, file or key (for the API: or not the caller's)."""

    http_status = 404


class Conflict(BadInput):
    """The thing exists but its state refuses the action (resuming a spent budget, cancelling a finished batch)."""

    http_status = 409

    def headers(self) -> dict[str, str]:
        """Asking again will not change the state: OpenAI's SDK retries a 409 unless told not to."""
        return {"x-should-retry": "false"}


class Unauthorized(BadInput):
    """A request to the API without a valid key: missing, unknown or revoked."""

    http_status = 401

    def headers(self) -> dict[str, str]:
        """The scheme a client must use, as RFC 9110 asks of a 401."""
        return {"WWW-Authenticate": 'Bearer realm="orbatch"'}


class Forbidden(BadInput):
    """A request the caller may not make this way: a form posted from another site, a page on a foreign host."""

    http_status = 403
    error_type = "permission_error"


class MethodNotAllowed(BadInput):
    """An API path asked with a method it does not answer (DELETE on a batch, say)."""

    http_status = 405


class RequestTimeout(BadInput):
    """A request body that stopped arriving (a stalled upload); nothing of it was kept."""

    http_status = 408


class TooLarge(BadInput):
    """A request body over its limit (an upload over the file size limit); nothing of it was kept."""

    http_status = 413


class UriTooLong(BadInput):
    """A request whose line (its URL) is over its limit; refused before it is read further."""

    http_status = 414


class HeadersTooLarge(BadInput):
    """A request whose headers are over their limit; refused before it is read further."""

    http_status = 431


class UnsupportedMediaType(BadInput):
    """A request body of a content type the endpoint does not take."""

    http_status = 415


class RateLimited(OrbatchError):
    """A key over its request rate; the client may try again after `retry_after` seconds."""

    exit_status = 1
    http_status = 429
    # OpenAI's type for a request-rate limit (its token limits say `tokens`).
    error_type = "requests"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message, code="rate_limit_exceeded")
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        """Retry-After in whole seconds (at least 1), and in milliseconds as OpenAI's SDK also reads it."""
        return {
            "Retry-After": str(max(1, round(self.retry_after + 0.5))),
            "retry-after-ms": str(max(1, int(self.retry_after * 1000))),
        }


class ServiceUnavailable(OrbatchError):
    """Postgres, Redis, an embedded service or OpenRouter cannot be reached; nothing the input can fix."""

    exit_status = 1
    http_status = 503


class NeedsPerson(OrbatchError):
    """The batch stopped and will not move until a person acts: paused on budget, credits or key, cancelled."""

    exit_status = EXIT_STOPPED
    http_status = 409


class Interrupted(OrbatchError):
    """Stopped by Ctrl-C; what was done is kept and the same command again carries on."""

    exit_status = EXIT_INTERRUPTED
    http_status = 499
