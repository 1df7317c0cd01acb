"""A batch's answers as the columns a user's table gets: one per schema field (else `answer`), and `error`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from jobs.formats.output_lines import ANSWER_FIELD
from jobs.formats.prompt_template import parse_answer
from jobs.library.schemas import ColumnType, column_types
from jobs.operations.results import AnswerRow

__all__ = ["ERROR_FIELD", "AnswerColumns"]

# Where a row's failure is said; empty for the rows that were answered.
ERROR_FIELD = "error"
# An answer field named like one of the user's own columns gets this suffix, so the user's column (a gold
# label, say) is never overwritten by the model's.
CLASH_SUFFIX = "_answer"


@dataclass(slots=True)
class AnswerColumns:
    """How answers become columns next to the user's: names (clashes renamed), types, values per row."""

    names: dict[str, str]
    types: dict[str, ColumnType]
    structured: bool
    error_name: str = ERROR_FIELD
    values: dict[str, list[Any]] = field(default_factory=dict)
    # Columns filled from a row's `extra` (a vote's agreement, ties and answers): their names as added.
    extras: dict[str, str] = field(default_factory=dict)
    # The user's own columns, which no added column may take.
    existing: tuple[str, ...] = ()

    @classmethod
    def plan(cls, schema: dict[str, Any] | None, existing: Iterable[str]) -> AnswerColumns:
        """The columns for answers to `schema` (None: plain text) beside the columns `existing`."""
        taken = set(existing)
        fields = column_types(schema)
        structured = schema is not None
        if fields is None:
            fields = {ANSWER_FIELD: "str" if schema is None else "any"}
        names = {name: name + CLASH_SUFFIX if name in taken else name for name in fields}
        types = {names[name]: kind for name, kind in fields.items()}
        error_name = (
            ERROR_FIELD + CLASH_SUFFIX
            if ERROR_FIELD in taken or ERROR_FIELD in names.values()
            else ERROR_FIELD
        )
        types[error_name] = "str"
        columns = cls(names, types, structured, error_name, existing=tuple(taken))
        columns.values = {name: [] for name in [*names.values(), error_name]}
        return columns

    @property
    def order(self) -> list[str]:
        """The added columns in order: the answer's, the extras, then the error."""
        return [*self.names.values(), *self.extras.values(), self.error_name]

    def extend(self, names: Iterable[str]) -> None:
        """Add columns filled from each row's `extra` (any type), renamed like answer fields on a clash."""
        taken = {*self.existing, *self.names.values(), self.error_name}
        for name in names:
            column = name + CLASH_SUFFIX if name in taken else name
            self.extras[name] = column
            self.types[column] = "any"
        # The columns in their order, the error last.
        self.values = {name: self.values.get(name, []) for name in self.order}
        self.types = {name: self.types[name] for name in self.order}

    def fields_of(self, row: AnswerRow) -> dict[str, Any]:
        """The added fields of one row: the answer's fields (None where it has none) and its error."""
        out: dict[str, Any] = dict.fromkeys(self.names.values())
        for name, column in self.extras.items():
            out[column] = (row.extra or {}).get(name)
        out[self.error_name] = row.error
        if row.content is None or row.error is not None:
            return out
        if not self.structured:
            answer = self.names[ANSWER_FIELD]
            out[answer] = row.content
            if row.structured:
                # An answer that is JSON though no schema was asked (an embeddings request's vectors).
                with contextlib.suppress(orjson.JSONDecodeError):
                    out[answer] = parse_answer(row.content)
                if not isinstance(out[answer], str):
                    self.types[answer] = "any"
            return out
        try:
            value = parse_answer(row.content)
        except orjson.JSONDecodeError:
            value = row.content
        if isinstance(value, dict) and ANSWER_FIELD not in self.names:
            for name, column in self.names.items():
                out[column] = value.get(name)
        elif ANSWER_FIELD in self.names:
            out[self.names[ANSWER_FIELD]] = value
        else:
            out[self.error_name] = f"invalid_answer: the answer is not a JSON object: {row.content[:200]}"
        return out

    def add(self, rows: Iterable[AnswerRow]) -> None:
        """Append the rows' fields to the column values held."""
        for row in rows:
            for name, value in self.fields_of(row).items():
                self.values[name].append(value)
