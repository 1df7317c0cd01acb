"""A record's votes: each model's answer, the majority value of each field, ties, and how far the models agree.

A `--vote` batch sends each record to every model listed and stores every answer; the record's result is the
value most models gave for each field of the answer (a JSON object's fields, else the whole answer as
`answer`). Values are compared as JSON, so `"spam"` and `"spam "` differ: a schema with an enum is what makes
votes comparable. A field where two or more values share the highest count is a tie, said as such: its value is
None and the tied values are listed. The agreement of a field is the share of the models that answered whose
value is the majority's (for a tie, the share of one of the tied values).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from jobs.formats.output_lines import ANSWER_FIELD
from jobs.formats.prompt_template import parse_answer

__all__ = ["AGREEMENT_FIELD", "TIES_FIELD", "VOTES_FIELD", "Ballot", "Vote", "answer_value", "tally"]

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


def tally(ballots: list[Ballot]) -> Vote:
    """The vote of a record's ballots: per field of the answers (a JSON object's, else `answer`)."""
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
    return vote
