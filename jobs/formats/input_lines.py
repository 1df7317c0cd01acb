"""Input lines: OpenAI Batch API lines (chat or embeddings), bare request bodies, or plain records filled into a
template."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from jobs.core.constants import CHAT_ENDPOINT, EMBEDDINGS_ENDPOINT
from jobs.core.errors import BadInput
from jobs.formats.prompt_template import Template

__all__ = [
    "BATCH_URL",
    "EMBEDDINGS_URL",
    "EMBEDDING_PARAMS",
    "ENDPOINTS",
    "FREE_ONLY_REFUSED_FIELDS",
    "LineError",
    "ParsedLine",
    "body_problem",
    "derived_custom_id",
    "embedding_inputs",
    "endpoint_of",
    "free_only_problem",
    "parse_line",
    "parse_models",
    "parse_record",
]

# custom_id is an identifier, not a payload; OpenAI's Batch API uses the same bound.
MAX_CUSTOM_ID_CHARS = 512

BATCH_URL = CHAT_ENDPOINT
EMBEDDINGS_URL = EMBEDDINGS_ENDPOINT
# The endpoints a batch runs, as OpenAI's Batch API names them (one per batch).
ENDPOINTS = (BATCH_URL, EMBEDDINGS_URL)
_ROLES = ("system", "user", "assistant", "tool", "developer")
_ENVELOPE_KEYS = {"custom_id", "method", "url", "body"}

# Types of the chat parameters users set most, so that `"temperature": "0.2"` is caught at submit
# time instead of costing an upstream 400 per line. None is allowed where the spec allows null.
_NUMBER = (int, float)
_PARAM_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "temperature": (_NUMBER, "a number"),
    "top_p": (_NUMBER, "a number"),
    "top_k": ((int,), "an integer"),
    "min_p": (_NUMBER, "a number"),
    "top_a": (_NUMBER, "a number"),
    "presence_penalty": (_NUMBER, "a number"),
    "frequency_penalty": (_NUMBER, "a number"),
    "repetition_penalty": (_NUMBER, "a number"),
    "max_tokens": ((int,), "an integer"),
    "max_completion_tokens": ((int,), "an integer"),
    "seed": ((int,), "an integer"),
    "n": ((int,), "an integer"),
    "logprobs": ((bool,), "true or false"),
    "top_logprobs": ((int,), "an integer"),
    "stop": ((str, list), "a string or a list of strings"),
    "response_format": ((dict,), "an object"),
    "tools": ((list,), "a list"),
    "tool_choice": ((str, dict), "a string or an object"),
    "provider": ((dict,), "an object"),
    "reasoning": ((dict,), "an object"),
    "metadata": ((dict,), "an object"),
    "user": ((str,), "a string"),
}


# Body fields OpenRouter bills per use whatever the model: its web search (`plugins: [{"id": "web"}]`,
# `web_search_options`) and its PDF parsing (`plugins: [{"id": "file-parser"}]`). A `--free-only` batch refuses
# them rather than let a free model cost money.
FREE_ONLY_REFUSED_FIELDS = ("plugins", "web_search_options")

# The `code` of a line that is not a JSON object, as OpenAI's batch validation names it.
_INVALID_JSON = "invalid_json_line"


class LineError(BadInput):
    """A line that cannot become a request: where it is and what is wrong with it."""

    def __init__(self, line_no: int, message: str, code: str = "invalid_request") -> None:
        super().__init__(f"LINE {line_no}: {message}", code=code, param=f"line {line_no}")
        self.line_no = line_no
        # What is wrong, without the line number (OpenAI's batch `errors.data` carry the two apart).
        self.detail = message


@dataclass(slots=True, frozen=True)
class ParsedLine:
    """A valid line: its id, the body to send (without model fields) and its own model chain, if any."""

    line_no: int
    custom_id: str
    body: dict[str, Any]
    models: list[str] | None
    # The plain record a template was filled from; None for a chat line.
    record: dict[str, Any] | None = None
    # The endpoint the body is for (BATCH_URL or EMBEDDINGS_URL).
    endpoint: str = BATCH_URL


def endpoint_of(body: dict[str, Any]) -> str:
    """The endpoint a stored body is for: an embeddings request has `input` and no `messages`."""
    return EMBEDDINGS_URL if "input" in body and "messages" not in body else BATCH_URL


def derived_custom_id(line_no: int) -> str:
    """The custom_id of a line that gives none."""
    return f"line-{line_no}"


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def parse_models(value: Any, field: str) -> list[str]:
    """A model chain from a JSON value, or a ValueError naming the field."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ValueError(f'"{field}" must be a non-empty list of model ids, got {_type_name(value)}')
    models: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f'"{field}"[{i}] must be a model id string, got {_type_name(item)}')
        if item.strip() not in models:
            models.append(item.strip())
    return models


def _check_messages(messages: Any) -> None:
    # On the path of every line of a million-line file: nothing is formatted unless something is wrong.
    if not isinstance(messages, list):
        raise ValueError(f'"messages" must be a list, got {_type_name(messages)}')
    if not messages:
        raise ValueError('"messages" is empty: give at least one message')
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"messages[{i}] must be an object, got {_type_name(message)}")
        role = message.get("role")
        if role not in _ROLES:
            shown = orjson.dumps(role).decode() if role is not None else "missing"
            raise ValueError(f"messages[{i}].role must be one of {', '.join(_ROLES)}; got {shown}")
        content = message.get("content")
        if content.__class__ is str:
            continue
        if content is None:
            if role == "assistant" and message.get("tool_calls"):
                continue
            raise ValueError(f"messages[{i}].content is missing")
        if not isinstance(content, list):
            if isinstance(content, str):
                continue
            raise ValueError(
                f"messages[{i}].content must be a string or a list of parts, got {_type_name(content)}"
            )
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise ValueError(f'messages[{i}].content[{j}] must be an object with a "type"')


@functools.lru_cache(maxsize=256)
def _schema_problem(schema_json: bytes) -> str | None:
    # Lines of a batch mostly share one schema: it is checked once, not once per line.
    try:
        Draft202012Validator.check_schema(orjson.loads(schema_json))
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        return f"not a valid JSON Schema at {where}: {exc.message}"
    return None


def _check_response_format(response_format: dict[str, Any]) -> None:
    """A line's own JSON schema is checked against the metaschema, as a --json-schema file is."""
    if response_format.get("type") != "json_schema":
        return
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise ValueError('"response_format.json_schema.schema" must be an object (a JSON Schema)')
    problem = _schema_problem(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS))
    if problem:
        raise ValueError(f'"response_format.json_schema.schema" is {problem}')


def free_only_problem(body: dict[str, Any]) -> str | None:
    """Why a body could be billed even when it is sent to a free model, for a `--free-only` batch."""
    for field in FREE_ONLY_REFUSED_FIELDS:
        if body.get(field):
            return (
                f"--free-only: {field!r} can be billed even on a free model (web search and file parsing are "
                "charged per use); remove it or submit without --free-only"
            )
    return None


def body_problem(body: dict[str, Any]) -> str | None:
    """What is wrong with a chat body (messages, parameter types, its schema), or None."""
    try:
        _check_body(body)
    except ValueError as exc:
        return str(exc)
    return None


def _check_body(body: dict[str, Any]) -> None:
    if "messages" not in body:
        raise ValueError('no "messages": a chat request needs a list of messages')
    _check_messages(body["messages"])
    if body.get("stream"):
        raise ValueError('"stream": true is not supported in a batch; remove it')
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        _check_response_format(response_format)
    # A body has a few keys and the table many: look up only the keys the body has.
    for key, value in body.items():
        if value is None or key not in _PARAM_TYPES:
            continue
        types, wanted = _PARAM_TYPES[key]
        if isinstance(value, bool) and bool not in types:
            raise ValueError(f'"{key}" must be {wanted}, got a boolean')
        if not isinstance(value, types):
            raise ValueError(f'"{key}" must be {wanted}, got {_type_name(value)}')


# OpenAI's and OpenRouter's embeddings parameters besides `model` and `input`, with their types.
_EMBEDDING_PARAMS: dict[str, tuple[tuple[type, ...], str]] = {
    "dimensions": ((int,), "an integer"),
    "encoding_format": ((str,), '"float" or "base64"'),
    "user": ((str,), "a string"),
    "input_type": ((str,), "a string"),
    "provider": ((dict,), "an object"),
}


# The parameters an embeddings request takes besides `model` and `input`.
EMBEDDING_PARAMS = frozenset(_EMBEDDING_PARAMS)


def _check_input(value: Any) -> None:
    """An embeddings `input`: a string, a list of strings, a list of token ids, or a list of such lists."""
    if isinstance(value, str):
        if not value:
            raise ValueError('"input" is an empty string: give the text to embed')
        return
    if not isinstance(value, list) or not value:
        shown = "an empty list" if isinstance(value, list) else _type_name(value)
        raise ValueError(f'"input" must be a string or a non-empty list of strings or token ids, got {shown}')
    for i, item in enumerate(value):
        if isinstance(item, str):
            if not item:
                raise ValueError(f"input[{i}] is an empty string")
        elif isinstance(item, list):
            if not item or not all(isinstance(t, int) and not isinstance(t, bool) for t in item):
                raise ValueError(f"input[{i}] must be a non-empty list of token ids (integers)")
        elif not isinstance(item, int) or isinstance(item, bool):
            raise ValueError(f"input[{i}] must be a string or token ids, got {_type_name(item)}")


def embedding_inputs(body: dict[str, Any]) -> int:
    """How many embeddings a stored embeddings body asks for (one per string or token list)."""
    value = body.get("input")
    if isinstance(value, list) and value and not all(isinstance(t, int) for t in value):
        return len(value)
    return 1


def _check_embeddings_body(body: dict[str, Any]) -> None:
    if "input" not in body:
        raise ValueError('no "input": an embeddings request needs the text to embed')
    if "messages" in body:
        raise ValueError('"messages" in an embeddings request: it takes "input" (the text to embed)')
    _check_input(body["input"])
    for key, value in body.items():
        if key not in _EMBEDDING_PARAMS:
            continue
        types, wanted = _EMBEDDING_PARAMS[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise ValueError(f'"{key}" must be {wanted}, got {_type_name(value)}')
    if "dimensions" in body and body["dimensions"] < 1:
        raise ValueError(f'"dimensions" must be at least 1, got {body["dimensions"]}')
    if body.get("encoding_format", "float") not in ("float", "base64"):
        raise ValueError(f'"encoding_format" must be "float" or "base64", got {body["encoding_format"]!r}')


def _custom_id(value: Any, line_no: int) -> str:
    if value is None:
        return derived_custom_id(line_no)
    if not isinstance(value, str):
        raise ValueError(f'"custom_id" must be a string, got {_type_name(value)}')
    if not value:
        raise ValueError('"custom_id" is empty')
    if len(value) > MAX_CUSTOM_ID_CHARS:
        raise ValueError(f'"custom_id" is {len(value)} characters long; the limit is {MAX_CUSTOM_ID_CHARS}')
    return value


def _decode(raw: bytes, line_no: int) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise LineError(
                line_no,
                f"not valid UTF-8 (byte 0x{raw[bad.start]:02x} at column {bad.start + 1})",
                _INVALID_JSON,
            ) from None
        # orjson counts lines and characters within the line it was given; the file's line is ours.
        raise LineError(
            line_no, f"not valid JSON at column {exc.pos + 1}: {exc.msg}", _INVALID_JSON
        ) from None


def parse_line(raw: bytes, line_no: int) -> ParsedLine | None:
    """Parse one line; None for a blank line, LineError for a bad one."""
    if not raw.strip():
        return None
    obj = _decode(raw, line_no)
    if not isinstance(obj, dict):
        raise LineError(line_no, f"each line must be a JSON object, got {_type_name(obj)}", _INVALID_JSON)
    # Postgres refuses NUL inside JSON text; say so here rather than fail the whole COPY.
    if b"\\u0000" in raw:
        raise LineError(line_no, "contains the NUL character (\\u0000), which cannot be stored; remove it")
    try:
        if "body" in obj or "url" in obj or "method" in obj:
            unknown = [] if _ENVELOPE_KEYS.issuperset(obj) else sorted(set(obj) - _ENVELOPE_KEYS)
            if unknown:
                raise ValueError(
                    f"unexpected field {unknown[0]!r} in a Batch API line (allowed: {sorted(_ENVELOPE_KEYS)})"
                )
            method = obj.get("method", "POST")
            if method != "POST":
                raise ValueError(f'"method" must be "POST", got {orjson.dumps(method).decode()}')
            endpoint = obj.get("url")
            if endpoint not in ENDPOINTS:
                raise ValueError(
                    f'"url" must be "{BATCH_URL}" or "{EMBEDDINGS_URL}", got {orjson.dumps(endpoint).decode()}'
                )
            body = obj.get("body")
            if not isinstance(body, dict):
                raise ValueError(f'"body" must be an object, got {_type_name(body)}')
            custom_id = _custom_id(obj.get("custom_id"), line_no)
            body = dict(body)
        else:
            custom_id = _custom_id(obj.get("custom_id"), line_no)
            body = {k: v for k, v in obj.items() if k != "custom_id"}
            # A bare body is an embeddings request when it has the text to embed and no messages.
            endpoint = endpoint_of(body)
        if endpoint == EMBEDDINGS_URL:
            _check_embeddings_body(body)
        else:
            _check_body(body)
        model = body.pop("model", None)
        chain = body.pop("models", None)
        models: list[str] | None = None
        if chain is not None:
            models = parse_models(chain, "models")
        if model is not None:
            first = parse_models(model, "model")[0]
            models = [first, *[m for m in (models or []) if m != first]]
    except ValueError as exc:
        raise LineError(line_no, str(exc)) from None
    return ParsedLine(line_no=line_no, custom_id=custom_id, body=body, models=models, endpoint=str(endpoint))


def parse_record(raw: bytes, line_no: int, template: Template) -> ParsedLine | None:
    """Parse one plain record and fill the template with it; None for a blank line, LineError for a bad one."""
    if not raw.strip():
        return None
    obj = _decode(raw, line_no)
    if not isinstance(obj, dict):
        raise LineError(
            line_no,
            f"with --template each line must be a JSON object (a record), got {_type_name(obj)}",
            _INVALID_JSON,
        )
    if b"\\u0000" in raw:
        raise LineError(line_no, "contains the NUL character (\\u0000), which cannot be stored; remove it")
    try:
        custom_id = _custom_id(obj.get("custom_id"), line_no)
        body = template.body(obj)
        if template.embed:
            _check_embeddings_body(body)
    except ValueError as exc:
        raise LineError(line_no, str(exc)) from None
    endpoint = EMBEDDINGS_URL if template.embed else BATCH_URL
    return ParsedLine(
        line_no=line_no, custom_id=custom_id, body=body, models=None, record=obj, endpoint=endpoint
    )
