"""A vote batch's records: each record once, its requests' answers tallied (`jobs.formats.votes`), streamed in
line order; the ones the models disagree on apart, for a person to review."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.core.states import RequestStatus
from jobs.formats.output_lines import ANSWER_FIELD
from jobs.formats.votes import AGREEMENT_FIELD, TIES_FIELD, VOTES_FIELD, Ballot, Vote, label_fields, tally
from jobs.operations.rows import (
    CONTENT,
    EXPORT_CHUNK,
    answer_schema,
    error_of,
    query,
    record_fields,
    record_of,
    rows,
)

__all__ = ["VOTE_EXTRAS", "VotedRecord", "dumps", "vote_models", "voted_record_chunks", "voted_records"]

# Every request of the batch, finished or not: a record is whole only once each of its models has finished.
_VOTE_ROWS = query("r.line_no, r.voter, r.record::text AS record," + CONTENT, "true")
# A voter cancelled (the batch cancelled or expired) is finished too: its record shows what the others answered.
_FINISHED = (RequestStatus.COMPLETED, RequestStatus.FAILED, RequestStatus.CANCELLED)
# The columns a table gets for a vote beside the majority's fields.
VOTE_EXTRAS = (AGREEMENT_FIELD, TIES_FIELD, VOTES_FIELD)
_VOTE = text("SELECT options->'vote' FROM batch WHERE id = :id")


@dataclass(slots=True)
class VotedRecord:
    """One record of a vote batch: where it stands, its vote, and the record as the file gave it."""

    line_no: int
    record: dict[str, Any]
    vote: Vote
    # True once every model voting has finished with it (answered or failed).
    finished: bool

    @property
    def failed(self) -> bool:
        """True when every model finished without an answer."""
        return self.finished and self.vote.answered == 0

    def as_output(self) -> dict[str, Any]:
        """The record with the majority's fields merged in (an answer that is not an object under `answer`),
        the agreement per field, the ties (when any), and each model's answer."""
        out = dict(self.record)
        majority = self.vote.majority
        if set(majority) == {ANSWER_FIELD} and not any(
            isinstance(a, dict) for a in self.vote.answers.values()
        ):
            out[ANSWER_FIELD] = majority[ANSWER_FIELD]
        else:
            out.update(majority)
        out[AGREEMENT_FIELD] = self.vote.agreement
        if self.vote.ties:
            out[TIES_FIELD] = self.vote.ties
        out[VOTES_FIELD] = self.vote.answers
        return out

    def as_error(self) -> dict[str, Any]:
        """The record with why no model answered it, each model's reason in `votes`."""
        reasons = "; ".join(f"{model}: {a['error']}" for model, a in self.vote.answers.items())
        return {
            **self.record,
            "error": {"code": "no_vote", "message": f"no model answered: {reasons}"},
            VOTES_FIELD: self.vote.answers,
        }


async def vote_models(engine: AsyncEngine, batch_id: str) -> list[str] | None:
    """The models a batch votes with, or None for a batch that does not vote."""
    async with engine.connect() as conn:
        value = (await conn.execute(_VOTE, {"id": batch_id})).scalar()
    return list(value) if value else None


async def voted_records(engine: AsyncEngine, batch_id: str) -> AsyncGenerator[VotedRecord]:
    """Every record of a vote batch in line order, its requests tallied, from one snapshot."""
    fields = await record_fields(engine, batch_id)
    labels = label_fields(await answer_schema(engine, batch_id))
    line: int | None = None
    record: dict[str, Any] = {}
    ballots: list[Ballot] = []
    finished = True
    async with contextlib.aclosing(rows(engine, _VOTE_ROWS, batch_id)) as found:
        async for row in found:
            if row["line_no"] != line:
                if line is not None:
                    yield VotedRecord(line, record, tally(ballots, labels), finished)
                line, record, ballots, finished = row["line_no"], record_of(row, fields), [], True
            status = row["status"]
            finished = finished and status in _FINISHED
            error = None
            if status == RequestStatus.FAILED:
                error = ": ".join(error_of(row))
            elif status == RequestStatus.CANCELLED:
                error = "cancelled: the batch was cancelled or expired before this model answered"
            elif status != RequestStatus.COMPLETED:
                error = f"not finished: the request is {status}"
            content = row["content"] if status == RequestStatus.COMPLETED else None
            ballots.append(Ballot(row["voter"], content, row["structured"], error))
    if line is not None:
        yield VotedRecord(line, record, tally(ballots, labels), finished)


async def voted_record_chunks(
    engine: AsyncEngine,
    batch_id: str,
    which: Literal["output", "errors", "disagreements"],
) -> AsyncGenerator[list[dict[str, Any]]]:
    """The finished records of a vote batch as output dicts, a few thousand at a time: those some model answered
    (`output`), those none did (`errors`), or those the models that answered do not all agree on."""
    chunk: list[dict[str, Any]] = []
    async for voted in voted_records(engine, batch_id):
        if not voted.finished:
            continue
        if which == "errors":
            if voted.failed:
                chunk.append(voted.as_error())
        elif not voted.failed and (which == "output" or not voted.vote.unanimous):
            chunk.append(voted.as_output())
        if len(chunk) >= EXPORT_CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def dumps(records: list[dict[str, Any]]) -> bytes:
    """Records as JSON lines."""
    return b"".join(orjson.dumps(r) + b"\n" for r in records)
