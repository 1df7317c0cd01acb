"""Answers the routes give: an object as JSON, the error answers each route documents, and the OpenAPI document
made to say what the app answers."""

from __future__ import annotations

from typing import Any

from fastapi import Response
from pydantic import BaseModel

from jobs.api.middleware import REQUEST_ID_HEADER
from jobs.api.schemas import ErrorBody

__all__ = ["ERRORS", "as_answered", "json_response"]


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    """The object serialised once by pydantic, without FastAPI's second validation pass."""
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


# What OpenAPI shows of the errors; every one has OpenAI's shape, `{"error": {...}}`.
ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error(
        "A parameter is missing, unknown or wrong (`param` names it): a value holding NUL, not UTF-8, or longer "
        "than 2048 characters included; or the body is not JSON."
    ),
    401: _error("No key, or a key that is unknown or revoked."),
    403: _error("A server started with `--no-auth` asked under a name that is not loopback."),
    404: _error("No such object for this key (another owner's objects answer the same)."),
    413: _error("The body is over its limit."),
    414: _error("The request line is over 128 KiB."),
    415: _error("The body's Content-Type is not the one this endpoint takes."),
    429: _error("The key is over its request rate; Retry-After says when to try again."),
    431: _error("The request's headers are over 32 KB."),
    503: _error("Postgres or Redis cannot be reached right now; try again shortly."),
}

# FastAPI documents a 422 for every route with parameters; this app answers those errors 400 (errors.py).
_FASTAPI_VALIDATION = ("HTTPValidationError", "ValidationError")

_REQUEST_ID = {
    "description": "This request's id, as the server's log records it: quote it when reporting a problem.",
    "schema": {"type": "string", "pattern": "^req_[0-9a-f]{32}$"},
}


def as_answered(document: dict[str, Any]) -> dict[str, Any]:
    """FastAPI's OpenAPI document, changed in place to say what the app answers: no 422 for a parameter that does
    not validate (a 400), and `x-request-id` on every answer."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            unprocessable = responses.get("422", {}).get("content", {}).get("application/json", {})
            if unprocessable.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                del responses["422"]
            for response in responses.values():
                response.setdefault("headers", {})[REQUEST_ID_HEADER] = _REQUEST_ID
    schemas = document.get("components", {}).get("schemas", {})
    for name in _FASTAPI_VALIDATION:
        schemas.pop(name, None)
    return document
