"""Answers the routes give: an object as JSON, and the error answers each route documents."""

from __future__ import annotations

from typing import Any

from fastapi import Response
from pydantic import BaseModel

from jobs.api.schemas import ErrorBody

__all__ = ["ERRORS", "json_response"]


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    """The object serialised once by pydantic, without FastAPI's second validation pass."""
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


# What OpenAPI shows of the errors; every one has OpenAI's shape, `{"error": {...}}`.
ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("A parameter is missing, unknown or wrong (`param` names it), or the body is not JSON."),
    401: _error("No key, or a key that is unknown or revoked."),
    404: _error("No such object for this key (another owner's objects answer the same)."),
    413: _error("The body is over its limit."),
    415: _error("The body's Content-Type is not the one this endpoint takes."),
    429: _error("The key is over its request rate; Retry-After says when to try again."),
}
