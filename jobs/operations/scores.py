"""How good a batch's labels are against a gold field of its records: accuracy, per-class precision, recall and
F1, the confusion matrix, and for a vote each model's accuracy and the models' agreement (Cohen's kappa for two,
Fleiss' for more).

Labels are compared as text: a string as it is, any other value as its JSON (`true`, `3`), so a gold `3` and an
answer `3` match, and `"Spam"` does not match `"spam"`. A record is scored when its gold field is present and not
null and it has an answer; a tie of a vote counts as the prediction `(tie)`, which is never right. Records left
out are counted, each with its reason.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import asdict, dataclass
from dataclasses import field as default
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.core.errors import BadInput
from jobs.formats.output_lines import ANSWER_FIELD
from jobs.formats.prompt_template import parse_answer
from jobs.formats.votes import VOTES_FIELD, gave_none, label_fields, schema_fields
from jobs.operations.results import answer_rows
from jobs.operations.rows import answer_schema
from jobs.operations.votes import vote_models

__all__ = ["TIE", "ClassScore", "Score", "cohen_kappa", "fleiss_kappa", "score_batch", "score_pairs"]

# The prediction of a vote whose field tied: never equal to a gold label.
TIE = "(tie)"
# A batch of chat lines keeps JSON null as its template, not SQL NULL.
_TEMPLATED = text("SELECT jsonb_typeof(template) = 'object' FROM batch WHERE id = :id")


async def _has_records(engine: AsyncEngine, batch_id: str) -> bool:
    async with engine.connect() as conn:
        return bool((await conn.execute(_TEMPLATED, {"id": batch_id})).scalar())


@dataclass(slots=True, frozen=True)
class ClassScore:
    """One label's precision, recall and F1, and how many records have it as their gold label."""

    label: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(slots=True)
class Score:
    """A batch's labels scored against its records' gold field."""

    batch_id: str
    gold: str
    field: str
    scored: int
    accuracy: float
    classes: list[ClassScore]
    # Gold label -> predicted label -> records.
    confusion: dict[str, dict[str, int]]
    # Records not scored, by reason (no gold value, no answer, the answer lacks the field).
    skipped: dict[str, int] = default(default_factory=dict)
    # A vote's models: each one's accuracy on the records it answered.
    models: dict[str, float] | None = None
    # A vote's agreement between models on the field: the kappa, which one, over how many records.
    kappa: float | None = None
    kappa_kind: str | None = None
    kappa_records: int = 0

    @property
    def columns(self) -> list[str]:
        """The confusion matrix's columns: every label answered or gold, then `(tie)` when a vote tied."""
        labels = sorted({*self.confusion, *(p for row in self.confusion.values() for p in row)} - {TIE})
        return labels + ([TIE] if any(TIE in row for row in self.confusion.values()) else [])

    def to_json(self) -> dict[str, Any]:
        """The score as plain JSON values."""
        return asdict(self)


def _label(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _ratio(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def score_pairs(pairs: list[tuple[str, str]]) -> tuple[float, list[ClassScore], dict[str, dict[str, int]]]:
    """Accuracy, per-class scores and the confusion matrix of (gold, predicted) pairs."""
    confusion: dict[str, Counter[str]] = {}
    for gold, predicted in pairs:
        confusion.setdefault(gold, Counter())[predicted] += 1
    labels = sorted({g for g, _ in pairs} | {p for _, p in pairs if p != TIE})
    classes = []
    for label in labels:
        true_positive = confusion.get(label, Counter())[label]
        answered = sum(row[label] for row in confusion.values())
        support = sum(confusion.get(label, Counter()).values())
        precision = _ratio(true_positive, answered)
        recall = _ratio(true_positive, support)
        f1 = round(2 * precision * recall / (precision + recall), 4) if precision + recall else 0.0
        classes.append(ClassScore(label, precision, recall, f1, support))
    right = sum(1 for gold, predicted in pairs if gold == predicted)
    matrix = {gold: dict(sorted(row.items())) for gold, row in sorted(confusion.items())}
    return _ratio(right, len(pairs)), classes, matrix


def cohen_kappa(first: list[str], second: list[str]) -> float | None:
    """Cohen's kappa of two raters' labels of the same items; None when it is undefined (one label only)."""
    n = len(first)
    if n == 0:
        return None
    observed = sum(1 for a, b in zip(first, second, strict=True) if a == b) / n
    one, two = Counter(first), Counter(second)
    expected = sum(one[label] * two[label] for label in one) / (n * n)
    if expected == 1:
        return None
    return round((observed - expected) / (1 - expected), 4)


def fleiss_kappa(items: list[list[str]]) -> float | None:
    """Fleiss' kappa of items each labelled by the same number (at least two) of raters; None when undefined."""
    if not items:
        return None
    raters = len(items[0])
    if raters < 2:
        return None
    totals: Counter[str] = Counter()
    agreement = 0.0
    for labels in items:
        counts = Counter(labels)
        totals.update(counts)
        agreement += (sum(c * c for c in counts.values()) - raters) / (raters * (raters - 1))
    observed = agreement / len(items)
    expected = sum((c / (len(items) * raters)) ** 2 for c in totals.values())
    if expected == 1:
        return None
    return round((observed - expected) / (1 - expected), 4)


def _chosen(fields: list[str], gold: str, labels: list[str]) -> str:
    """The answer field to score when none was named: the only one, else the one named like the gold field, else
    the only label field of the schema (an enum, a boolean or an integer: `label` beside a free-text `reason`)."""
    if len(fields) == 1:
        return fields[0]
    if gold in fields:
        return gold
    if len(labels) == 1:
        return labels[0]
    raise BadInput(
        f"the answers have several fields ({', '.join(fields)}): name the one to score with --field",
        param="field",
    )


def _field_of(answer: Any, name: str) -> tuple[bool, Any]:
    """The field's value of an answer (an object's field, or a whole answer that is not an object)."""
    if isinstance(answer, dict):
        return (name in answer, answer.get(name))
    return (name == ANSWER_FIELD, answer)


async def score_batch(engine: AsyncEngine, batch_id: str, gold: str, name: str | None = None) -> Score:
    """Score a batch's answers (a vote's majority) against each record's `gold` field; BadInput when the field
    to score cannot be told (several schema fields and no `name`)."""
    schema = await answer_schema(engine, batch_id)
    fields, labels = schema_fields(schema), label_fields(schema)
    if name is None and fields:
        name = _chosen(fields, gold, labels)
    elif fields and name not in fields:
        raise BadInput(
            f"--field {name!r} is not a field of the answers' schema ({', '.join(fields)})", param="field"
        )
    voters = await vote_models(engine, batch_id)
    pairs: list[tuple[str, str]] = []
    skipped: Counter[str] = Counter()
    model_right: Counter[str] = Counter()
    model_seen: Counter[str] = Counter()
    ratings: list[list[str]] = []
    async with contextlib.aclosing(answer_rows(engine, batch_id, with_records=True)) as chunks:
        async for chunk in chunks:
            for row in chunk:
                record = row.record or {}
                truth = None if record.get(gold) is None else _label(record[gold])
                if row.content is None:
                    skipped[f"no {gold!r} in the record" if truth is None else "no answer"] += 1
                    continue
                try:
                    answer = parse_answer(row.content) if row.structured else row.content
                except orjson.JSONDecodeError:
                    answer = row.content
                if name is None:
                    # No template's schema to read (chat lines): the first answer's fields tell.
                    name = _chosen(list(answer), gold, []) if isinstance(answer, dict) else ANSWER_FIELD
                present, value = _field_of(answer, name)
                ties = (row.extra or {}).get("ties") or {}
                if voters is not None:
                    # The models' agreement is over every record they all answered, gold or not.
                    _count_models(row.extra or {}, name, truth, voters, model_right, model_seen, ratings)
                    present = present or name in ties
                if truth is None:
                    skipped[f"no {gold!r} in the record"] += 1
                    continue
                if not present:
                    skipped[f"no {name!r} in the answer"] += 1
                    continue
                pairs.append((truth, TIE if name in ties else _label(value)))
    if not pairs and not await _has_records(engine, batch_id):
        raise BadInput(
            "the batch is of chat lines, which carry no record to hold a gold field: score a batch of records "
            "(submitted with --template)",
            param="gold",
        )
    if not pairs:
        # A misspelt gold field, or a batch with no answer yet: nothing to score, not a score of 0 %.
        reasons = "; ".join(f"{count} {reason}" for reason, count in skipped.most_common()) or "no records"
        raise BadInput(f"nothing to score against {gold!r}: {reasons}", param="gold")
    accuracy, classes, confusion = score_pairs(pairs)
    score = Score(
        batch_id, gold, name or ANSWER_FIELD, len(pairs), accuracy, classes, confusion, dict(skipped)
    )
    if voters is not None:
        score.models = {m: _ratio(model_right[m], model_seen[m]) for m in voters}
        score.kappa_kind = "cohen" if len(voters) == 2 else "fleiss"
        score.kappa_records = len(ratings)
        if len(voters) == 2:
            score.kappa = cohen_kappa([r[0] for r in ratings], [r[1] for r in ratings])
        else:
            score.kappa = fleiss_kappa(ratings)
    return score


def _count_models(
    extra: dict[str, Any],
    name: str,
    truth: str | None,
    voters: list[str],
    right: Counter[str],
    seen: Counter[str],
    ratings: list[list[str]],
) -> None:
    """Each model's answer to one record against the truth; its labels kept for the kappa when all gave one."""
    answers = extra.get(VOTES_FIELD) or {}
    labels: list[str] = []
    for model in voters:
        answer = answers.get(model)
        present, value = _field_of(answer, name)
        if gave_none(answer) or not present:
            continue
        label = _label(value)
        if truth is not None:
            seen[model] += 1
            right[model] += label == truth
        labels.append(label)
    if len(labels) == len(voters):
        ratings.append(labels)
