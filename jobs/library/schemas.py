"""Answer schemas as a Python user gives them: a Pydantic model class or a JSON Schema dict."""

from __future__ import annotations

import copy
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel

from jobs.core.errors import BadInput

__all__ = ["ColumnType", "answer_schema", "column_types", "schema_name"]

# The type a table's column of one answer field gets; `any` is left to the table library to infer.
ColumnType = str

_SCALARS = {"integer": "int", "number": "float", "boolean": "bool", "string": "str"}


def _strict(node: Any) -> Any:
    """A schema as OpenAI's strict mode takes it: every object closed, every property required.

    Pydantic leaves objects open and fields with defaults optional; strict structured output refuses both.
    """
    if isinstance(node, dict):
        out = {key: _strict(value) for key, value in node.items()}
        if out.get("type") == "object" and isinstance(out.get("properties"), dict):
            out.setdefault("additionalProperties", False)
            out["required"] = list(out["properties"])
        return out
    if isinstance(node, list):
        return [_strict(item) for item in node]
    return node


def answer_schema(schema: type[BaseModel] | dict[str, Any] | None) -> dict[str, Any] | None:
    """The JSON Schema sent and checked for `schema`; BadInput for anything else or a broken schema."""
    if schema is None:
        return None
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        result: dict[str, Any] = _strict(schema.model_json_schema())
    elif isinstance(schema, dict):
        result = copy.deepcopy(schema)
    else:
        raise BadInput(
            f"schema= takes a Pydantic model class or a JSON Schema dict, got {type(schema).__name__}",
            param="schema",
        )
    try:
        Draft202012Validator.check_schema(result)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise BadInput(
            f"schema=: not a valid JSON Schema at {where}: {exc.message}", param="schema"
        ) from None
    return result


def schema_name(schema: type[BaseModel] | dict[str, Any] | None) -> str:
    """The name the schema is sent under: the model's class name, or a dict's `title`."""
    if isinstance(schema, type):
        return schema.__name__
    if isinstance(schema, dict) and isinstance(schema.get("title"), str):
        return str(schema["title"])
    return ""


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return target if isinstance(target, dict) else {}
    return node


def _column_type(node: dict[str, Any], root: dict[str, Any]) -> ColumnType:
    node = _resolve(node, root)
    kinds = node.get("type")
    if isinstance(kinds, list):
        kinds = [k for k in kinds if k != "null"]
        kinds = kinds[0] if len(kinds) == 1 else None
    if kinds is None and isinstance(node.get("enum"), list):
        values = [v for v in node["enum"] if v is not None]
        if values and all(isinstance(v, str) for v in values):
            kinds = "string"
    if kinds is None and isinstance(node.get("anyOf"), list):
        options = [o for o in node["anyOf"] if not (isinstance(o, dict) and o.get("type") == "null")]
        if len(options) == 1 and isinstance(options[0], dict):
            return _column_type(options[0], root)
    return _SCALARS.get(kinds, "any") if isinstance(kinds, str) else "any"


def column_types(schema: dict[str, Any] | None) -> dict[str, ColumnType] | None:
    """Each top-level field of an object schema and the column type its answers get; None for another schema."""
    if schema is None:
        return None
    root = _resolve(schema, schema)
    properties = root.get("properties")
    if not isinstance(properties, dict):
        return None
    return {
        name: _column_type(node if isinstance(node, dict) else {}, schema)
        for name, node in properties.items()
    }
