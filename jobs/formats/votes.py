"""A record's votes: each model's answer, the majority value of each field, ties, and how far the models agree.

A `--vote` batch sends each record to every model listed and stores every answer; the record's result is the
value most models gave for each field of the answer (a JSON object's fields, else the whole answer as
`answer`). Values are compared as JSON, so `"spam"` and `"spam "` differ: a schema with an enum is what makes
votes comparable. A field where two or more values share the highest count is a tie, said as such: its value is
None and the tied values are listed. The agreement of a field is the share of the models that answered whose
value is the majority's (for a tie, the share of one of the tied values).

With a schema that has label fields (an enum or const, a boolean, an integer), the vote is taken on those alone: a
free-text field (a `reason`) is never the same from two models, and voting on it would make every record a tie.
Such a field is taken from the first model, in the order listed, whose labels are the majority's (else from the
first model that answered), and has no agreement of its own.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from jobs.formats.output_lines import ANSWER_FIELD
from jobs.formats.prompt_template import parse_answer

__all__ = [
    "AGREEMENT_FIELD",
    "TIES_FIELD",
    "VOTES_FIELD",
    "Ballot",
    "Vote",
    "answer_value",
    "gave_none",
    "label_fields",
    "schema_fields",
    "tally",
]

# Where a voted record says how far the models agreed, which fields tied, and what each model answered.
AGREEMENT_FIELD = "agreement"
TIES_FIELD = "ties"
VOTES_FIELD = "votes"


@dataclass(slots=True, frozen=True)
class Ballot:
    """One model's part in a record's vote: its answer's text (None when it gave none) or why it failed."""

    model: str
    content: str | None
    structured: bool
    error: str | None = None


def answer_value(content: str, structured: bool) -> Any:
    """An answer as a value: a structured answer parsed (its text when it is not JSON), else its text."""
    if not structured:
        return content
    try:
        return parse_answer(content)
    except orjson.JSONDecodeError:
        return content


def gave_none(answer: Any) -> bool:
    """True for a model's place in `Vote.answers` that holds no answer: `{"error": ...}`, or nothing at all."""
    return answer is None or (isinstance(answer, dict) and set(answer) == {"error"})


def schema_fields(schema: Any) -> list[str]:
    """The fields of the object a JSON schema asks for; none for another schema, or none."""
    props = schema.get("properties") if isinstance(schema, dict) else None
    return list(props) if isinstance(props, dict) else []


def label_fields(schema: Any) -> list[str]:
    """The fields of a schema's object that hold a label: an enum or a const, a boolean, an integer. A vote is
    taken on these; a free-text field (a `reason`) is never the same twice and is not voted on."""
    props = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(props, dict):
        return []
    out = []
    for name, sub in props.items():
        if not isinstance(sub, dict):
            continue
        kinds = sub.get("type")
        kinds = set(kinds) if isinstance(kinds, list) else {kinds}
        if "enum" in sub or "const" in sub or kinds & {"boolean", "integer"}:
            out.append(name)
    return out


def _key(value: Any) -> bytes:
    # JSON with sorted keys, so equal objects count as one value whatever their keys' order.
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


@dataclass(slots=True)
class Vote:
    """A record's vote: the majority value of each field, each field's agreement, ties, and every answer."""

    majority: dict[str, Any] = field(default_factory=dict)
    agreement: dict[str, float] = field(default_factory=dict)
    # Fields where the top count is shared: the tied values, in the order the models gave them.
    ties: dict[str, list[Any]] = field(default_factory=dict)
    # Each model's answer (its value), or {"error": ...} for a model that gave none.
    answers: dict[str, Any] = field(default_factory=dict)
    # How many models answered; 0 when none did (the record failed).
    answered: int = 0

    @property
    def unanimous(self) -> bool:
        """True when every model that answered gave the same value for every field."""
        return self.answered > 0 and not self.ties and all(share == 1.0 for share in self.agreement.values())


def tally(ballots: list[Ballot], labels: list[str] | None = None) -> Vote:
    """The vote of a record's ballots: per field of the answers (a JSON object's, else `answer`); with `labels`,
    per label field, the others taken from a model of the majority."""
    vote = Vote()
    fields: dict[str, list[Any]] = {}
    for ballot in ballots:
        if ballot.content is None:
            vote.answers[ballot.model] = {"error": ballot.error or "no answer"}
            continue
        value = answer_value(ballot.content, ballot.structured)
        vote.answers[ballot.model] = value
        vote.answered += 1
        items = value.items() if isinstance(value, dict) else [(ANSWER_FIELD, value)]
        for name, item in items:
            if not labels or name in labels or not isinstance(value, dict):
                fields.setdefault(name, []).append(item)
    for name, values in fields.items():
        counts = Counter(_key(v) for v in values)
        top = max(counts.values())
        leaders = [k for k, n in counts.items() if n == top]
        first = {_key(v): v for v in reversed(values)}
        # A model that left a field out does not agree with the others on it: the share is of the answers.
        vote.agreement[name] = round(top / vote.answered, 4)
        if len(leaders) > 1:
            vote.majority[name] = None
            vote.ties[name] = [first[k] for k in leaders]
        else:
            vote.majority[name] = first[leaders[0]]
    if labels:
        _carry_free_text(vote)
    return vote


def _carry_free_text(vote: Vote) -> None:
    """The fields not voted on, from the first model whose labels are the majority's (else the first answer)."""
    answers = [a for a in vote.answers.values() if isinstance(a, dict) and not gave_none(a)]
    if not answers:
        return
    agreeing = [
        a
        for a in answers
        if all(_key(a.get(n)) == _key(v) for n, v in vote.majority.items() if n not in vote.ties)
    ]
    for name, value in (agreeing or answers)[0].items():
        if name not in vote.majority:
            vote.majority[name] = value
