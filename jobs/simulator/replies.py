"""The shapes of the simulator's answers: completions and their usage, error bodies, fake structured output."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web

from jobs.formats.structured import requested_schema
from jobs.simulator.catalogue import Cost

__all__ = [
    "SPEC_MESSAGES",
    "completion",
    "completion_bound",
    "context_message",
    "erring_reply",
    "error_body",
    "error_response",
    "fake_instance",
    "json_response",
    "labelled_reply",
    "last_user_text",
    "mislabels",
    "prompt_text",
    "should_err",
    "structured_reply",
    "token_counts",
    "usage",
]

# The example message OpenRouter's OpenAPI spec gives for each error status (its /embeddings lists them all):
# what the simulator says when a scripted failure of a route that follows the spec names no message of its own.
SPEC_MESSAGES = {
    400: "Invalid request parameters",
    401: "Missing Authentication header",
    402: "Insufficient credits. Add more using https://openrouter.ai/credits",
    404: "Resource not found",
    408: "Operation timed out. Please try again later.",
    413: "Request payload too large",
    429: "Rate limit exceeded",
    500: "Internal Server Error",
    502: "Provider returned error",
    503: "Service temporarily unavailable",
    524: "Request timed out. Please try again later.",
    529: "Provider returned error",
}


def json_response(value: Any) -> web.Response:
    """A 200 with `value` as its JSON body."""
    return web.Response(body=orjson.dumps(value), content_type="application/json")


def error_body(
    status: int, message: str, code: Any = None, metadata: dict[str, Any] | None = None
) -> dict[str, Any]:
    """An error body as OpenRouter sends one: `{"error": {"code", "message", "metadata"?}, "user_id"}`."""
    error: dict[str, Any] = {"code": status if code is None else code, "message": message}
    if metadata is not None:
        error["metadata"] = metadata
    return {"error": error, "user_id": "user_sim"}


def error_response(
    status: int,
    message: str,
    code: Any = None,
    metadata: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An error as OpenRouter answers one: `{"error": {"code", "message", "metadata"?}, "user_id"}`."""
    return web.Response(
        status=status,
        body=orjson.dumps(error_body(status, message, code, metadata)),
        headers=headers,
        content_type="application/json",
    )


def last_user_text(messages: list[Any]) -> str:
    """The text of the last user message: what the simulator echoes and what rules match."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def context_message(context: int, prompt_tokens: int, completion_tokens: int) -> str:
    """OpenRouter's 400 message for a prompt and `max_tokens` over a model's context window, in the words its
    answers use (as reported by its users; the API reference gives no example of it)."""
    return (
        f"This endpoint's maximum context length is {context} tokens. However, you requested about "
        f"{prompt_tokens + completion_tokens} tokens ({prompt_tokens} of text input, {completion_tokens} in the "
        'output). Please reduce the length of either one, or use the "middle-out" transform to compress your '
        "prompt automatically."
    )


def completion_bound(body: dict[str, Any]) -> int:
    """The completion tokens a chat body asks room for: `max_completion_tokens`, else `max_tokens`, else none."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def _follows_reply(messages: list[Any]) -> bool:
    """The conversation ends with a user turn right after an assistant's reply (a correction turn)."""
    roles = [m.get("role") if isinstance(m, dict) else None for m in messages[-2:]]
    return roles == ["assistant", "user"]


def prompt_text(messages: list[Any]) -> str:
    """The text a call is about: the last user message, or before a correction turn the one it corrects, so
    that rules and answers stay the record's whatever follow-up the client adds."""
    if _follows_reply(messages):
        return last_user_text(messages[:-2]) or last_user_text(messages)
    return last_user_text(messages)


def should_err(rate: float, model: str, text: str, seen: int, messages: list[Any]) -> bool:
    """Whether an erring model errs on this call: never after a correction turn, else for a share `rate` of
    calls, drawn from the model, the prompt and how many times it was seen before (deterministic)."""
    if rate <= 0 or _follows_reply(messages):
        return False
    digest = hashlib.sha256(f"{model}\n{seen}\n{text}".encode()).hexdigest()
    return int(digest[:8], 16) / 0x1_0000_0000 < rate


def erring_reply(body: dict[str, Any], text: str, label: str | None) -> str | None:
    """A reply that fails the request's schema: its valid reply cut in half, or (`label`) with that label in
    every enum field; None when the request asks for no schema."""
    valid = structured_reply(body, text)
    schema = requested_schema(body)
    if valid is None or schema is None:
        return None
    props = schema.get("properties")
    if not isinstance(props, dict):
        props = {}
    labelled = [name for name, sub in props.items() if isinstance(sub, dict) and "enum" in sub]
    if label is None or not labelled:
        return valid[: max(1, len(valid) // 2)]
    value = orjson.loads(valid)
    for name in labelled:
        value[name] = label
    return orjson.dumps(value).decode()


def mislabels(rate: float, model: str, text: str) -> bool:
    """Whether a model that mislabels (`label_noise`) does on this prompt: a share `rate` of prompts, drawn from
    the model and the prompt alone, so a record is mislabelled the same way on every run and every retry."""
    if rate <= 0:
        return False
    digest = hashlib.sha256(f"noise\n{model}\n{text}".encode()).hexdigest()
    return int(digest[:8], 16) / 0x1_0000_0000 < rate


# How an enum field's value is replaced: from its enum, the value it holds and where it is, the value it takes.
_Relabel = Callable[[list[Any], Any, str], Any]


def _relabelled(schema: Any, value: Any, relabel: _Relabel, where: str = "", depth: int = 0) -> Any:
    """`value` (which follows `schema`) with each enum field's value as `relabel` gives it, nested ones too."""
    if not isinstance(schema, dict) or depth > 8:
        return value
    enum = schema.get("enum")
    if isinstance(enum, list) and value in enum:
        return relabel(enum, value, where)
    for key in ("anyOf", "oneOf", "allOf"):  # fake_instance follows the first branch
        if isinstance(schema.get(key), list) and schema[key]:
            return _relabelled(schema[key][0], value, relabel, where, depth + 1)
    props = schema.get("properties")
    if isinstance(props, dict) and isinstance(value, dict):
        return {
            name: _relabelled(props.get(name), item, relabel, f"{where}/{name}", depth + 1)
            for name, item in value.items()
        }
    if isinstance(value, list):
        return [
            _relabelled(schema.get("items"), item, relabel, f"{where}/{i}", depth + 1)
            for i, item in enumerate(value)
        ]
    return value


def labelled_reply(
    body: dict[str, Any], text: str, model: str, *, noise: float = 0.0, fixed: str | None = None
) -> str | None:
    """A valid structured reply as a model that mislabels would give it: on a share `noise` of prompts every
    enum field holds another value of its enum (chosen from the model, the prompt and the field), and with
    `fixed` every enum field whose enum holds that value holds it. None when the request asks for no schema."""
    valid = structured_reply(body, text)
    schema = requested_schema(body)
    if valid is None or schema is None or (fixed is None and not mislabels(noise, model, text)):
        return valid
    value = orjson.loads(valid)
    if mislabels(noise, model, text):

        def other(enum: list[Any], right: Any, where: str) -> Any:
            others = [v for v in enum if v != right]
            if not others:
                return right
            digest = hashlib.sha256(f"{model}\n{where}\n{text}".encode()).hexdigest()
            return others[int(digest[:8], 16) % len(others)]

        value = _relabelled(schema, value, other)
    if fixed is not None:
        value = _relabelled(schema, value, lambda enum, held, _where: fixed if fixed in enum else held)
    return orjson.dumps(value).decode()


def echo(text: str, bound: int) -> str:
    """The simulator's answer to a prompt it has no rule for: the prompt echoed, cut to the completion bound
    when the request sets one (four characters a token), as a model's answer never runs past `max_tokens`."""
    content = f"echo: {text}"
    return content[: bound * 4] if bound > 0 else content


def token_counts(prompt_text: str, content: str) -> tuple[int, int]:
    """Prompt and completion tokens, taken as four characters each (at least one)."""
    return max(1, len(prompt_text) // 4), max(1, len(content) // 4)


def usage(
    prompt_tokens: int, completion_tokens: int, cost: Cost, *, byok: bool, omit_cost: bool
) -> dict[str, Any]:
    """A completion's `usage`, with its cost as OpenRouter reports it (a BYOK fee, or none at all, if asked)."""
    result: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "cost": float(cost.total),
        "is_byok": False,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "image_tokens": 0},
        "cost_details": {
            "upstream_inference_cost": None,
            "upstream_inference_prompt_cost": float(cost.prompt),
            "upstream_inference_completions_cost": float(cost.completion),
        },
    }
    if byok:
        # OpenRouter's BYOK fee is 5 % of what the provider charges the user's own key.
        result["is_byok"] = True
        result["cost"] = float(cost.total * Decimal("0.05"))
        result["cost_details"]["upstream_inference_cost"] = float(cost.total)
    if omit_cost:
        del result["cost"]
    return result


def completion(
    generation: int,
    model: str,
    content: str,
    usage: dict[str, Any],
    finish: str = "stop",
    choice_error: dict[str, Any] | None = None,
    id_prefix: str = "gen",
) -> dict[str, Any]:
    """A chat completion with one choice; `choice_error` makes it an error inside HTTP 200; its id starts with
    `id_prefix` (a batch line's with `gen-batch`)."""
    choice: dict[str, Any] = {
        "index": 0,
        "logprobs": None,
        "finish_reason": finish,
        "native_finish_reason": finish,
        "message": {"role": "assistant", "content": content, "refusal": None, "reasoning": None},
    }
    if choice_error is not None:
        choice["error"] = choice_error
    return {
        "id": f"{id_prefix}-{int(time.time())}-{generation:08d}",
        "provider": "SimProvider",
        "model": model,
        "object": "chat.completion",
        "created": int(time.time()),
        "system_fingerprint": None,
        "choices": [choice],
        "usage": usage,
    }


def fake_instance(schema: Any, text: str, depth: int = 0) -> Any:
    """A value that follows a (simple) JSON schema, chosen from the prompt so that answers vary by record."""
    if not isinstance(schema, dict) or depth > 8:
        return None
    seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][seed % len(schema["enum"])]
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return fake_instance(schema[key][0], text, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        props: dict[str, Any] = schema["properties"] if isinstance(schema.get("properties"), dict) else {}
        return {name: fake_instance(sub, f"{name}:{text}", depth + 1) for name, sub in props.items()}
    if kind == "array":
        return [fake_instance(schema.get("items", {}), text, depth + 1)] * max(
            1, int(schema.get("minItems", 1))
        )
    if kind == "integer":
        return int(schema.get("minimum", 0)) + seed % 5
    if kind == "number":
        return float(schema.get("minimum", 0)) + (seed % 100) / 100
    if kind == "boolean":
        return bool(seed % 2)
    if kind == "null":
        return None
    words = " ".join(text.split()[:12])
    return f"echo: {words}"[: int(schema.get("maxLength", 200))]


def structured_reply(body: dict[str, Any], text: str) -> str | None:
    """The reply to a request for structured output: JSON following its schema, as a model would send."""
    schema = requested_schema(body)
    return None if schema is None else orjson.dumps(fake_instance(schema, text)).decode()
