"""One exception hierarchy for what orbatch reports to a user; each branch carries its exit and HTTP status.

The CLI turns any `OrbatchError` into its message and exit status in one place (`jobs.cli.main`), and the HTTP
API into an OpenAI-shaped error with its HTTP status in one place: a new error only picks its branch.
"""

from __future__ import annotations

from typing import ClassVar

from jobs.constants import EXIT_INTERRUPTED, EXIT_STOPPED

__all__ = [
    "BadInput",
    "Conflict",
    "Interrupted",
    "NeedsPerson",
    "NotFound",
    "OrbatchError",
    "ServiceUnavailable",
    "SettingsError",
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
