"""Structured output: check a reply against the JSON schema its request asked for."""

from __future__ import annotations

import functools
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from jobs.formats.prompt_template import parse_answer

__all__ = [
    "HEALING_PLUGIN",
    "REPLY_QUOTE_CHARS",
    "correction_turn",
    "quoted_reply",
    "reply_problem",
    "requested_schema",
    "routed_for_schema",
]

# OpenRouter's plugin that repairs malformed JSON in a reply before it is returned (`--heal`); its id as the
# OpenAPI spec's ResponseHealingPlugin names it.
HEALING_PLUGIN = "response-healing"
# Of an invalid reply, this much is quoted back in the correction turn: enough for the model to see its mistake
# (a label, a field, a truncated object), bounded so that a runaway reply of megabytes does not make the retry's
# prompt (which is paid for) as large, nor the attempt row that keeps it.
REPLY_QUOTE_CHARS = 4000


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


def quoted_reply(content: str | None) -> str:
    """The invalid reply as the correction turn quotes it: at most REPLY_QUOTE_CHARS, its cut said."""
    text = content or ""
    if len(text) <= REPLY_QUOTE_CHARS:
        return text
    return text[:REPLY_QUOTE_CHARS] + f" [... {len(text) - REPLY_QUOTE_CHARS} more characters cut]"


def correction_turn(body: dict[str, Any], reply: str, problem: str) -> dict[str, Any]:
    """The body with the model's invalid reply and a user turn saying what was wrong: the retry asks again."""
    messages = list(body.get("messages") or [])
    messages.append({"role": "assistant", "content": reply})
    messages.append(
        {
            "role": "user",
            "content": (
                f"Your reply did not follow the required JSON schema: {problem}. Reply again with only a JSON "
                "value that follows the schema."
            ),
        }
    )
    return {**body, "messages": messages}


def routed_for_schema(body: dict[str, Any], heal: bool) -> dict[str, Any]:
    """The body as sent when it asks for a JSON schema: only providers that honour `response_format` (unless the
    line's own `provider` says `require_parameters`), and with `heal` OpenRouter's healing plugin (unless the
    line names it)."""
    if requested_schema(body) is None:
        return body
    sent = dict(body)
    provider = body.get("provider")
    if provider is None or (isinstance(provider, dict) and "require_parameters" not in provider):
        sent["provider"] = {**(provider or {}), "require_parameters": True}
    plugins = body.get("plugins") or []
    named = not isinstance(plugins, list) or any(
        isinstance(p, dict) and p.get("id") == HEALING_PLUGIN for p in plugins
    )
    if heal and not named:  # a line that names the plugin itself (to turn it off, say) keeps its own
        sent["plugins"] = [*plugins, {"id": HEALING_PLUGIN}]
    return sent
