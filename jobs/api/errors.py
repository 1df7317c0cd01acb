"""The one place an error becomes an HTTP answer: OpenAI's `{"error": {...}}` with the error's own status, or
for a browser on a dashboard page, that page's error page (a sign-in form for a 401).

Routes only raise `OrbatchError`s. What the framework or a service raises (a body that does not validate, an
unknown path, Postgres or Redis unreachable, a bug) is first turned into the `OrbatchError` it means, so
every answer takes the same road and no route shapes an error of its own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from redis.exceptions import RedisError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobs.api.inputs import shown_name
from jobs.api.middleware import current_request_id
from jobs.api.pages.render import error_page, wants_page
from jobs.api.schemas import ErrorBody, ErrorDetail
from jobs.core.db import connection_lost
from jobs.core.errors import (
    BadInput,
    MethodNotAllowed,
    NotFound,
    OrbatchError,
    ServiceUnavailable,
    TooLarge,
    UnsupportedMediaType,
)
from jobs.core.logs import get_logger

__all__ = ["as_orbatch_error", "error_response", "install_error_handlers", "validation_error"]

log = get_logger(__name__)

_TYPE_TAG = re.compile(r"[a-z_]+\[.*\]|str|int|float|bool|dict|list|decimal|none")
# Where pydantic says the problem is a dict's key rather than its value.
_KEY_STEP = "[key]"
# Where FastAPI says a value came from; OpenAI's `param` is the field's own path.
_SOURCES = frozenset({"body", "query", "path", "header"})


def error_response(error: OrbatchError) -> Response:
    """OpenAI's error body for the error, with its HTTP status and headers."""
    detail = ErrorDetail(message=error.message, type=error.error_type, param=error.param, code=error.code)
    return Response(
        ErrorBody(error=detail).model_dump_json(),
        status_code=error.http_status,
        media_type="application/json",
        headers=error.headers(),
    )


def validation_error(errors: Sequence[Any]) -> BadInput:
    """The first problem pydantic found in a request, as OpenAI words it."""
    if not errors:
        return BadInput("the request is not valid", code="invalid_request")
    first = errors[0]
    kind = str(first.get("type", ""))
    # A union's errors name the member tried (`list[str]`) in their path; the client's field has no such step.
    path = [
        str(part)
        for part in first.get("loc", ())
        if part not in _SOURCES and part != _KEY_STEP and not _TYPE_TAG.fullmatch(str(part))
    ]
    # The client's text: a field name a megabyte long, or holding control characters, is shown safely.
    param = shown_name(".".join(path)) or None
    if kind == "json_invalid":
        where = first.get("ctx", {}).get("error", "")
        return BadInput(
            f"We could not parse the JSON body of your request ({where}). The API expects a JSON object "
            "with the Content-Type application/json.",
            code="invalid_json",
        )
    if kind == "extra_forbidden":
        return BadInput(
            f"Unrecognized request argument supplied: {param}", param=param, code="unknown_parameter"
        )
    if kind == "missing":
        return BadInput(
            f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
        )
    if param is None:
        return BadInput("The request body must be a JSON object.", code="invalid_request")
    return BadInput(
        f"Invalid value for '{param}': {first.get('msg', 'not valid')}.", param=param, code="invalid_value"
    )


def as_orbatch_error(request: Request, exc: BaseException) -> OrbatchError:
    """What an exception from below the routes means to the client."""
    if isinstance(exc, OrbatchError):
        return exc
    if isinstance(exc, RequestValidationError):
        return validation_error(exc.errors())
    if isinstance(exc, StarletteHTTPException):
        # FastAPI wraps what goes wrong while it reads a body (a body over its limit) in a 400.
        if isinstance(exc.__cause__, OrbatchError):
            return exc.__cause__
        where = f"{request.method} {request.url.path}"[:200]
        if exc.status_code == 404:
            return NotFound(f"Invalid URL ({where})", code="unknown_url")
        if exc.status_code == 405:
            return MethodNotAllowed(f"Method not allowed ({where})", code="method_not_allowed")
        if exc.status_code == 413:
            return TooLarge(str(exc.detail), code="request_too_large")
        if exc.status_code == 415:
            return UnsupportedMediaType(str(exc.detail), code="unsupported_media_type")
        return BadInput(str(exc.detail), code="invalid_request")
    if isinstance(exc, PoolTimeout):
        return ServiceUnavailable(
            "orbatch is busy: every database connection of this instance is in use; try again shortly",
            code="server_busy",
        )
    if isinstance(exc, RedisError) or connection_lost(exc):
        return ServiceUnavailable(
            "orbatch cannot reach its database or queue right now; try again shortly",
            code="service_unavailable",
        )
    return OrbatchError(
        "The server had an error while processing your request. Its log tells why under the request ID "
        f"{current_request_id()}: please include it if you report this.",
        code="server_error",
    )


async def _handle(request: Request, exc: Exception) -> Response:
    error = as_orbatch_error(request, exc)
    # Every error answer is one log line, under the request's id (bound by middleware.RequestIds): a user
    # with an answer's `x-request-id` finds its line.
    where = {"method": request.method, "path": request.url.path[:200], "status": error.http_status}
    if error.http_status >= 500:
        log.error("request failed", **where, code=error.code, error=f"{type(exc).__name__}: {exc}")
    else:
        log.info("request refused", **where, code=error.code, param=error.param)
    if wants_page(request):
        return error_page(request, error)
    return error_response(error)


def install_error_handlers(app: FastAPI) -> None:
    """Route every error the app can meet through `_handle`."""
    for kind in (OrbatchError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(kind, _handle)
