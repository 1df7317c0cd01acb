"""Prompt templates: plain JSON records in, one chat request per record out (`--template`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from jobs.core.errors import BadInput

__all__ = ["Template", "TemplateError", "load_json_schema", "load_template_text", "parse_answer"]

# `{field}` or `{a.b}` for a nested field; `{{` and `}}` are literal braces; any other brace is literal too,
# so a prompt that shows JSON needs no escaping.
_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*)\}")
_SCHEMA_NAME = re.compile(r"[^A-Za-z0-9_-]")
# Models often wrap JSON in a Markdown fence even when asked for bare JSON; the fence is not the answer.
_FENCE = re.compile(r"^\s*```(?:json|JSON)?\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)


class TemplateError(BadInput):
    """A template, system text or schema that cannot be used; the message says what and where."""


def load_template_text(value: str) -> str:
    """The template itself: the file the value names if there is one, else the value as written."""
    path = Path(value)
    try:
        is_file = len(value) < 4096 and "\n" not in value and path.is_file()
    except OSError:
        is_file = False
    if not is_file:
        return value
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TemplateError(f"--template {value}: not UTF-8 text (byte {exc.start + 1})") from None


def load_json_schema(path: Path) -> dict[str, Any]:
    """A JSON Schema file, checked against the metaschema so a broken one fails before anything is sent."""
    try:
        schema = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise TemplateError(f"--json-schema {path}: cannot read it ({exc.strerror})") from None
    except orjson.JSONDecodeError as exc:
        raise TemplateError(f"--json-schema {path}: not valid JSON ({exc})") from None
    if not isinstance(schema, dict):
        raise TemplateError(f"--json-schema {path}: a JSON Schema must be an object")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise TemplateError(
            f"--json-schema {path}: not a valid JSON Schema at {where}: {exc.message}"
        ) from None
    return schema


def parse_answer(content: str) -> Any:
    """The JSON value of a reply, fenced in Markdown or not; raises orjson.JSONDecodeError if it is not JSON."""
    fenced = _FENCE.match(content)
    return orjson.loads(fenced.group(1) if fenced else content)


def _render_value(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


@dataclass(slots=True, frozen=True)
class Template:
    """A parsed template: literal text and the record fields that fill it."""

    text: str
    system: str | None = None
    json_schema: dict[str, Any] | None = None
    schema_name: str = "answer"
    _parts: tuple[str | tuple[str, ...], ...] = field(default=(), repr=False, compare=False)
    # The rendered text is to be embedded (an embeddings request's `input`), not a chat prompt.
    embed: bool = False

    @classmethod
    def parse(
        cls,
        text: str,
        system: str | None = None,
        json_schema: dict[str, Any] | None = None,
        schema_name: str = "",
        embed: bool = False,
    ) -> Template:
        """Split the template into literal text and `{field}` paths; a template with no field is refused."""
        if embed and (system is not None or json_schema is not None):
            raise TemplateError(
                "--embed makes the text to embed: a system message or a schema has no place in it"
            )
        parts: list[str | tuple[str, ...]] = []
        pos = 0
        literal: list[str] = []
        for match in _TOKEN.finditer(text):
            literal.append(text[pos : match.start()])
            token = match.group(0)
            if token in ("{{", "}}"):
                literal.append(token[0])
            else:
                parts.append("".join(literal))
                literal = []
                parts.append(tuple(match.group(1).split(".")))
            pos = match.end()
        literal.append(text[pos:])
        parts.append("".join(literal))
        if not any(isinstance(p, tuple) for p in parts):
            raise TemplateError(
                "--template has no {field} placeholder, so every record would become the same request; "
                "name the record fields to fill in, e.g. 'Label this review: {text}'"
            )
        name = _SCHEMA_NAME.sub("_", schema_name)[:64] or "answer"
        return cls(text, system, json_schema, name, tuple(p for p in parts if p != ""), embed)

    @property
    def fields(self) -> list[str]:
        """The record fields the template uses, in order of first use."""
        seen: dict[str, None] = {}
        for part in self._parts:
            if isinstance(part, tuple):
                seen.setdefault(".".join(part))
        return list(seen)

    def render(self, record: dict[str, Any]) -> str:
        """The user message for one record; ValueError names a missing field."""
        out: list[str] = []
        for part in self._parts:
            if isinstance(part, str):
                out.append(part)
                continue
            value: Any = record
            for depth, key in enumerate(part):
                if not isinstance(value, dict) or key not in value:
                    where = ".".join(part[: depth + 1])
                    raise ValueError(
                        f"the record has no field {where!r} (the template uses {{{'.'.join(part)}}})"
                    )
                value = value[key]
            out.append(_render_value(value))
        return "".join(out)

    def body(self, record: dict[str, Any]) -> dict[str, Any]:
        """The body for one record: an optional system message, the rendered user message, the schema; or, to
        embed, the rendered text as the input."""
        if self.embed:
            return {"input": self.render(record)}
        messages: list[dict[str, Any]] = []
        if self.system is not None:
            messages.append({"role": "system", "content": self.system})
        messages.append({"role": "user", "content": self.render(record)})
        body: dict[str, Any] = {"messages": messages}
        if self.json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": self.schema_name, "strict": True, "schema": self.json_schema},
            }
        return body

    def to_json(self) -> dict[str, Any]:
        """What the batch row keeps of the template (and what makes two submits the same batch)."""
        return {
            "template": self.text,
            "system": self.system,
            "json_schema": self.json_schema,
            # Only when set: the templates stored before embeddings keep their identity.
            **({"embed": True} if self.embed else {}),
        }
