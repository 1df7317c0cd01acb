"""Structured output: check a reply against the JSON schema its request asked for."""

from __future__ import annotations

import functools
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from jobs.formats.prompt_template import parse_answer

__all__ = ["reply_problem", "requested_schema"]


def requested_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The schema a request body asks the reply to follow (`response_format` of type json_schema), if any."""
    response_format = body.get("response_format")
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    return schema if isinstance(schema, dict) else None


@functools.lru_cache(maxsize=64)
def _validator(schema_json: bytes) -> Draft202012Validator:
    # One compiled validator per schema: a batch of a million rows shares one.
    return Draft202012Validator(orjson.loads(schema_json))


def reply_problem(schema: dict[str, Any], content: str | None) -> str | None:
    """Why a reply does not satisfy the schema (a short message), or None when it does."""
    if content is None or not content.strip():
        return "the reply is empty; the request asked for JSON following its schema"
    try:
        value = parse_answer(content)
    except orjson.JSONDecodeError as exc:
        return (
            f"the reply is not JSON ({exc.msg} at character {exc.pos + 1}); the request asked for its schema"
        )
    validator = _validator(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))
    error = best_match(validator.iter_errors(value))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
    return f"the reply does not follow the schema at {where}: {error.message}"[:500]
