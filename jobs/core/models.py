"""The database model: batches, their requests, every upstream attempt and every result."""

from __future__ import annotations

import enum
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    SmallInteger,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from jobs.core.sql import literal, sql
from jobs.core.states import (
    BatchPriority,
    BatchStatus,
    Lane,
    Outcome,
    PauseReason,
    RemoteState,
    RequestStatus,
)

__all__ = [
    "ApiBatch",
    "ApiCallback",
    "ApiFile",
    "ApiFileChunk",
    "ApiKey",
    "Attempt",
    "Base",
    "Batch",
    "BatchTally",
    "ErrorTally",
    "MinuteTally",
    "ModelPrice",
    "ModelTally",
    "RemoteBatch",
    "Request",
    "Result",
    "TriesTally",
]


def _check_in(column: str, values: type[enum.StrEnum]) -> CheckConstraint:
    allowed = ", ".join(literal(v) for v in values)
    return CheckConstraint(f"{column} IN ({allowed})", name=f"{column}_known")


class Base(DeclarativeBase):
    """Declarative base of orbatch's tables."""


class Batch(Base):
    """One submitted file and the options it was submitted with."""

    __tablename__ = "batch"
    __table_args__ = (
        _check_in("status", BatchStatus),
        _check_in("priority", BatchPriority),
        _check_in("lane", Lane),
        CheckConstraint(
            "pause_reason IS NULL OR pause_reason IN ({})".format(", ".join(literal(r) for r in PauseReason)),
            name="pause_reason_known",
        ),
        Index("batch_source_sha256_idx", "source_sha256"),
        # The dashboard's list of every batch, newest first (revision 0008).
        Index("batch_created_idx", "created_at", "id"),
        Index(
            "batch_active_idx", "status", postgresql_where=sql("status IN ({B.IN_PROGRESS}, {B.CANCELLING})")
        ),
        # The batches whose completion window can still run out, and those that ran out lately.
        Index(
            "batch_expiring_idx",
            "expires_at",
            postgresql_where=sql(
                "expires_at IS NOT NULL AND status IN ({B.VALIDATING}, {B.IN_PROGRESS}, {B.PAUSED})"
            ),
        ),
        Index("batch_expired_idx", "expired_at", postgresql_where=sql("status = {B.EXPIRED}")),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    name: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default=BatchStatus.VALIDATING.value)
    pause_reason: Mapped[str | None] = mapped_column(Text)
    pause_message: Mapped[str | None] = mapped_column(Text)
    resume_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    models: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'"))
    max_attempts: Mapped[int] = mapped_column(Integer)
    # Answer requests identical to one already answered from its stored result (`submit --dedupe`).
    dedupe: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # Only `:free` models may be sent for this batch.
    free_only: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # The spend (USD) at which the batch stops before starting another call; NULL: no cap.
    max_cost: Mapped[Decimal | None] = mapped_column(Numeric)
    # Recorded spend, kept here (only for batches with a cap) so the check costs no scan of the attempts.
    spent: Mapped[Decimal] = mapped_column(Numeric, server_default=text("0"))
    options: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    # For a batch of plain records (`--template`): the template, system text and JSON schema it was built with.
    template: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # The records' fields in the order the input first gave them (revision 0011): `jsonb` keeps keys in an order
    # of its own, and a table written back keeps the user's column order from this.
    record_fields: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    # What the batch was estimated to need and cost when it was submitted (revision 0013; `orbatch estimate`'s
    # JSON), shown by `usage` beside what it took. NULL for batches stored before it.
    estimate: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # A user's own labels for the batch (`--metadata k=v`, the API's `metadata`).
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONB)
    # Called the local simulator, not OpenRouter: its calls never count against a real account's quota.
    simulated: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # Which batches run first (revision 0010): strict tiers, fair shares within each.
    priority: Mapped[str] = mapped_column(Text, server_default=BatchPriority.NORMAL.value)
    # How its requests reach OpenRouter (revision 0015): live calls, the Batch API, or each as it can.
    lane: Mapped[str] = mapped_column(Text, server_default=Lane.LIVE.value)
    # What the batch lane had to say once (its Batch API not enabled for the key: the batch ran live).
    lane_note: Mapped[str | None] = mapped_column(Text)
    # The record field holding the right answer, named at submit (`--gold`): the batch page scores the answers
    # against it. Not part of the batch's identity (revision 0018).
    gold: Mapped[str | None] = mapped_column(Text)
    source_name: Mapped[str | None] = mapped_column(Text)
    source_sha256: Mapped[str | None] = mapped_column(Text)
    total: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    invalid_lines: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The end of the completion window (batches created through the API); NULL: no window.
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set by a trigger (revision 0007) when the status becomes `expired` or `cancelling`, whoever changed it.
    expired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelling_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Request(Base):
    """One input line: its body, its model chain and where it stands."""

    __tablename__ = "request"
    __table_args__ = (
        # A custom_id once per batch, or once per voter in a --vote batch (revision 0018; NULLs equal).
        UniqueConstraint(
            "batch_id",
            "custom_id",
            "voter",
            name="request_batch_custom_id_key",
            postgresql_nulls_not_distinct=True,
        ),
        _check_in("status", RequestStatus),
        # The feeder's scan: work of one batch not yet queued, in line order.
        Index(
            "request_unqueued_idx",
            "batch_id",
            "id",
            postgresql_where=sql("status = {R.PENDING} AND enqueued_at IS NULL"),
        ),
        # What a batch has in the queue now, bounded by the feed window.
        Index(
            "request_queued_idx",
            "batch_id",
            postgresql_where=sql("status = {R.PENDING} AND enqueued_at IS NOT NULL"),
        ),
        # Leases that may have expired.
        Index("request_running_idx", "lease_expires_at", postgresql_where=sql("status = {R.RUNNING}")),
        Index("request_batch_status_idx", "batch_id", "status"),
        Index("request_fingerprint_idx", "fingerprint", postgresql_where=text("fingerprint IS NOT NULL")),
        # The batch lane's requests not yet in a remote batch, in line order (revision 0015).
        Index(
            "request_remote_waiting_idx",
            "batch_id",
            "id",
            postgresql_where=sql("status = {R.REMOTE} AND remote_batch_id IS NULL"),
        ),
        # A remote batch's requests still waiting for its lines.
        Index(
            "request_remote_member_idx",
            "remote_batch_id",
            postgresql_where=sql("status = {R.REMOTE} AND remote_batch_id IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    batch_id: Mapped[str] = mapped_column(Text, ForeignKey("batch.id", ondelete="CASCADE"))
    custom_id: Mapped[str] = mapped_column(Text)
    line_no: Mapped[int] = mapped_column(Integer)
    body: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # NULL means the batch's chain; most lines have no chain of their own and a million copies would waste space.
    models: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    status: Mapped[str] = mapped_column(Text, server_default=RequestStatus.PENDING.value)
    # Every upstream call made, numbering the attempt rows.
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # Calls that count against the batch's max_attempts (waits for quota, credits or a key do not).
    failures: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # Index into the chain of the first model the next call sends.
    chain_pos: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # The tokens the request asks of a model's context: its prompt's estimate plus its completion bound; a model
    # whose context_length is smaller is skipped without a call. NULL: not known, every model fits (revision 0016).
    context_needed: Mapped[int | None] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Times the request was fed again with its attempt count unchanged (a queued job given up as lost, or the
    # request given back unsent), so that its next job id is new.
    feeds: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    lease_owner: Mapped[str | None] = mapped_column(Text)
    last_error: Mapped[str | None] = mapped_column(Text)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # sha256 of the model chain and the body, for batches submitted with --dedupe.
    fingerprint: Mapped[str | None] = mapped_column(Text)
    # The input record a template was filled from, for `results --format records`; NULL for chat lines.
    record: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # The remote batch it was last put in (revision 0015); while the request is `remote`, the one that holds it.
    remote_batch_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("remote_batch.id", ondelete="SET NULL")
    )
    # The one model this request votes with, in a --vote batch (one request per model for each record, all with
    # the record's line and custom_id); NULL for a request that does not vote (revision 0018).
    voter: Mapped[str | None] = mapped_column(Text)
    # A --long split record too long for its chain: the most tokens a chunk of its text may hold; NULL: sent
    # whole (revision 0018).
    split_tokens: Mapped[int | None] = mapped_column(Integer)


class Attempt(Base):
    """The usage record: one row per upstream call, written as it starts and completed when it ends."""

    __tablename__ = "attempt"
    __table_args__ = (
        UniqueConstraint("request_id", "number", name="attempt_request_number_key"),
        _check_in("outcome", Outcome),
        Index("attempt_batch_idx", "batch_id"),
        # Today's free calls (the daily quota rebuilt after Redis lost its count) without a scan of every attempt.
        Index(
            "attempt_free_started_idx",
            "started_at",
            postgresql_where=text("models_sent[1] LIKE '%\\:free'"),
        ),
        _check_in("lane", Lane),
        # The answers that needed a correction, counted by `usage` (revision 0017).
        Index(
            "attempt_invalid_output_idx",
            "batch_id",
            "request_id",
            postgresql_where=text("error_code = 'invalid_output'"),
        ),
        # One attempt per line of a remote batch: a line stored twice is stored once (revision 0015).
        Index(
            "attempt_remote_line_key",
            "remote_batch_id",
            "request_id",
            unique=True,
            postgresql_where=text("remote_batch_id IS NOT NULL"),
        ),
        # The few attempts that skipped models, for `usage`'s skipped counts (revision 0016).
        Index("attempt_skipped_idx", "batch_id", postgresql_where=text("models_skipped IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    request_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("request.id", ondelete="CASCADE"))
    batch_id: Mapped[str] = mapped_column(Text, ForeignKey("batch.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    http_status: Mapped[int | None] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(Text, server_default=Outcome.IN_FLIGHT.value)
    # The worker process (host:pid:nonce) that made the call.
    worker: Mapped[str | None] = mapped_column(Text)
    models_sent: Mapped[list[str]] = mapped_column(ARRAY(Text))
    # Models of the chain passed over before this call: their context cannot hold the request (revision 0016).
    models_skipped: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    model: Mapped[str | None] = mapped_column(Text)
    provider: Mapped[str | None] = mapped_column(Text)
    generation_id: Mapped[str | None] = mapped_column(Text)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    reasoning_tokens: Mapped[int | None] = mapped_column(Integer)
    cached_tokens: Mapped[int | None] = mapped_column(Integer)
    cost: Mapped[Decimal | None] = mapped_column(Numeric)
    cost_estimated: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    error_code: Mapped[str | None] = mapped_column(Text)
    error_message: Mapped[str | None] = mapped_column(Text)
    # An `invalid_output` attempt's reply (bounded), which the next attempt's correction turn quotes (0017).
    reply: Mapped[str | None] = mapped_column(Text)
    # The part of a split request this call answered (`chunk 2/7`, `combine 1/2`, `final`); NULL for a call
    # that sent the whole request (revision 0018).
    part: Mapped[str | None] = mapped_column(Text)
    # For a reused answer: the request whose stored result answered this one.
    reused_from: Mapped[int | None] = mapped_column(BigInteger)
    # `batch` for a line of a remote batch (OpenRouter's Batch API), `live` for a call (revision 0015).
    lane: Mapped[str] = mapped_column(Text, server_default=Lane.LIVE.value)
    # The remote batch whose line this is (no foreign key: the record outlives nothing it names).
    remote_batch_id: Mapped[int | None] = mapped_column(BigInteger)


class RemoteBatch(Base):
    """One batch of OpenRouter's Batch API made for a batch's requests (revision 0015): recorded, with its
    requests, before the create is sent; its remote id stored as soon as the create is answered."""

    __tablename__ = "remote_batch"
    __table_args__ = (
        _check_in("state", RemoteState),
        Index("remote_batch_batch_idx", "batch_id"),
        # The rows a driver may take: those not over, by when they are next due.
        Index(
            "remote_batch_due_idx",
            "next_at",
            postgresql_where=sql("state NOT IN ({S.DONE}, {S.REFUSED})"),
        ),
        # At most one create whose answer is unknown per model, endpoint and upstream: a create lost in a crash
        # is then found again by listing OpenRouter's batches, unmistaken for another of ours.
        Index(
            "remote_batch_sending_key",
            "model",
            "endpoint",
            "simulated",
            unique=True,
            postgresql_where=sql("state = {S.SENDING}"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    batch_id: Mapped[str] = mapped_column(Text, ForeignKey("batch.id", ondelete="CASCADE"))
    # Made for a simulated batch: driven only by workers in front of the simulator.
    simulated: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # The model id sent as the batch's `model` (the `:batch` variant, or the base id, ORBATCH_BATCH_SLUG).
    model: Mapped[str] = mapped_column(Text)
    endpoint: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(Text, server_default=RemoteState.READY.value)
    remote_id: Mapped[str | None] = mapped_column(Text, unique=True)
    # OpenRouter's own status word (validating, in_progress, finalizing, completed, failed, expired, …).
    remote_status: Mapped[str | None] = mapped_column(Text)
    total: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # The size of its `requests`, as stored (an over-estimate of what is sent: JSONB's text has spaces).
    bytes: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    completed: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    failed: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # Lines stored as answers, and as failures, from its results.
    answered: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    line_failures: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # What OpenRouter says it charged for the whole batch (`usage.cost`), once it ended.
    cost: Mapped[Decimal | None] = mapped_column(Numeric)
    provider: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # When the create was sent: a lost answer is looked for among the batches created after it.
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    submitted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # OpenRouter's deadline for it, and when it ended there.
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When a driver next looks at it.
    next_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # The worker driving it now: one at a time.
    lease_owner: Mapped[str | None] = mapped_column(Text)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The results page to read next (`next_cursor`), so a restart goes on from there.
    cursor: Mapped[str | None] = mapped_column(Text)
    # Its orbatch batch was cancelled: when the cancel was passed on, and whether OpenRouter refused it (403).
    cancel_sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_refused: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # Reads in a row that found it gone (404): a few make it over.
    misses: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # The last thing that went wrong with it (OpenRouter's `error.message`, a refused create, …).
    error: Mapped[str | None] = mapped_column(Text)


class ModelPrice(Base):
    """An upstream's model list as last fetched: the ids it knows and their prices (USD per token)."""

    __tablename__ = "model_price"

    # The upstream's base URL (OpenRouter's, a simulator's): each has a list of its own (revision 0010).
    upstream: Mapped[str] = mapped_column(Text, primary_key=True)
    id: Mapped[str] = mapped_column(Text, primary_key=True)
    prompt: Mapped[Decimal | None] = mapped_column(Numeric)
    completion: Mapped[Decimal | None] = mapped_column(Numeric)
    request: Mapped[Decimal | None] = mapped_column(Numeric)
    fetched_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # A model of the embeddings list (`GET /embeddings/models`), not of the chat list (revision 0014).
    embeddings: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # The most tokens (prompt and completion) the model takes; NULL when the list does not say (revision 0016).
    context_length: Mapped[int | None] = mapped_column(Integer)


class Result(Base):
    """The stored answer of a completed request, written in the transaction that completes it."""

    __tablename__ = "result"

    request_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("request.id", ondelete="CASCADE"), primary_key=True
    )
    attempt_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("attempt.id", ondelete="CASCADE"))
    body: Mapped[dict[str, Any]] = mapped_column(JSONB)
    content: Mapped[str | None] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


# The tallies below are kept by triggers (migration 0006) as requests, attempts and results change, so that
# reading a batch's counts, usage, errors or history costs a few rows whatever the batch's size. Each is split
# in shards by request id (8; 4 for the minute history), so concurrent workers rarely wait on one counter row;
# a read sums the shards.


class BatchTally(Base):
    """A batch's requests by status, and its calls, tokens and cost."""

    __tablename__ = "batch_tally"

    batch_id: Mapped[str] = mapped_column(Text, ForeignKey("batch.id", ondelete="CASCADE"), primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    pending: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    running: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    completed: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    failed: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    cancelled: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    # Requests in the batch lane, waiting for or in a remote batch (revision 0015).
    remote: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    # Attempts that ended, except answers reused from another request (those are `reused`).
    calls: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    reused: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    completion_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    cached_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    cost: Mapped[Decimal] = mapped_column(Numeric, server_default=text("0"))


class ModelTally(Base):
    """A batch's calls, answers, tokens and cost by the model that served ('' for calls with no answer) and
    the lane that took them (live calls, or lines of remote batches)."""

    __tablename__ = "batch_model_tally"

    batch_id: Mapped[str] = mapped_column(Text, ForeignKey("batch.id", ondelete="CASCADE"), primary_key=True)
    model: Mapped[str] = mapped_column(Text, primary_key=True)
    # Revision 0015.
    lane: Mapped[str] = mapped_column(Text, primary_key=True, server_default=Lane.LIVE.value)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    calls: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    # Requests this model answered (their stored results), and how many of those it answered as a fallback:
    # the request's chain named another model first.
    answers: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    fallbacks: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    reused: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    completion_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    cached_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    cost: Mapped[Decimal] = mapped_column(Numeric, server_default=text("0"))
    # Calls whose cost was estimated from list prices (OpenRouter reported none).
    estimated: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))


class ErrorTally(Base):
    """A batch's failed calls by error code, with the latest message."""

    __tablename__ = "batch_error_tally"

    batch_id: Mapped[str] = mapped_column(Text, ForeignKey("batch.id", ondelete="CASCADE"), primary_key=True)
    code: Mapped[str] = mapped_column(Text, primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    last_message: Mapped[str | None] = mapped_column(Text)
    last_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class MinuteTally(Base):
    """A batch's history by minute and model: answers, failed requests ('' model), calls and cost."""

    __tablename__ = "batch_minute_tally"

    batch_id: Mapped[str] = mapped_column(Text, ForeignKey("batch.id", ondelete="CASCADE"), primary_key=True)
    minute: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    model: Mapped[str] = mapped_column(Text, primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    answers: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    failed: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    calls: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    cost: Mapped[Decimal] = mapped_column(Numeric, server_default=text("0"))


class TriesTally(Base):
    """A batch's finished requests by how many upstream calls each took."""

    __tablename__ = "batch_tries_tally"

    batch_id: Mapped[str] = mapped_column(Text, ForeignKey("batch.id", ondelete="CASCADE"), primary_key=True)
    tries: Mapped[int] = mapped_column(Integer, primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))


# The HTTP API's tables (revision 0007): keys, uploaded files and their bytes, what a batch created through
# the API adds to the batch, and the completion callbacks to send.


class ApiKey(Base):
    """An owner of files and batches, and the key that acts as it (stored as its sha256 only)."""

    __tablename__ = "api_key"

    # The owner's name: every file and batch the key makes belongs to it, and a new key for the same name
    # (after a revoke) sees them again.
    name: Mapped[str] = mapped_column(Text, primary_key=True)
    # sha256 of the key; NULL once revoked.
    digest: Mapped[str | None] = mapped_column(Text, unique=True)
    # The key's first characters, so a list can say which key it is without holding it.
    hint: Mapped[str] = mapped_column(Text)
    # Signs this owner's completion callbacks (Standard Webhooks, as OpenAI's SDK verifies them).
    callback_secret: Mapped[str] = mapped_column(Text)
    # Requests a minute for this key; NULL: the server's ORBATCH_API_RATE_PER_MINUTE.
    rate_per_minute: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ApiFile(Base):
    """A file as OpenAI's Files API shows it: an upload (bytes in `api_file_chunk`) or a batch's output."""

    __tablename__ = "api_file"
    __table_args__ = (
        # Listing an owner's files in either order, with a cursor.
        Index("api_file_owner_created_idx", "owner", "created_at", "id"),
        Index("api_file_expires_idx", "expires_at", postgresql_where=text("expires_at IS NOT NULL")),
        Index("api_file_batch_idx", "batch_id", postgresql_where=text("batch_id IS NOT NULL")),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    owner: Mapped[str] = mapped_column(Text)
    filename: Mapped[str] = mapped_column(Text)
    purpose: Mapped[str] = mapped_column(Text)
    bytes: Mapped[int] = mapped_column(BigInteger)
    # sha256 of an upload's bytes: a batch's source identity, as for a file on disk.
    sha256: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # For a batch's output or error file: the batch, and which of the two. Its bytes are made from the
    # result rows when it is downloaded, never stored.
    batch_id: Mapped[str | None] = mapped_column(Text, ForeignKey("batch.id", ondelete="CASCADE"))
    kind: Mapped[str | None] = mapped_column(Text)


class ApiFileChunk(Base):
    """One piece of an uploaded file's bytes, in order."""

    __tablename__ = "api_file_chunk"

    file_id: Mapped[str] = mapped_column(
        Text, ForeignKey("api_file.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class ApiBatch(Base):
    """What a batch created through the API adds: its owner, input file, window, errors and output files."""

    __tablename__ = "api_batch"
    __table_args__ = (
        Index("api_batch_owner_created_idx", "owner", "created_at", "batch_id"),
        # Batches whose output files are still to be made once they end: the active ones, a few.
        Index("api_batch_unfinalized_idx", "batch_id", postgresql_where=text("finalized_at IS NULL")),
    )

    batch_id: Mapped[str] = mapped_column(Text, ForeignKey("batch.id", ondelete="CASCADE"), primary_key=True)
    owner: Mapped[str] = mapped_column(Text)
    input_file_id: Mapped[str] = mapped_column(Text)
    endpoint: Mapped[str] = mapped_column(Text)
    completion_window: Mapped[str] = mapped_column(Text)
    # OpenAI's `errors.data` of a batch whose file had bad lines.
    errors: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB)
    callback_url: Mapped[str | None] = mapped_column(Text)
    # `output_expires_after.seconds`: the output and error files expire this long after they are made.
    output_expires_seconds: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # When the batch's output and error files were made after it ended; NULL while it runs (and again if
    # `retry --failed` reopens it).
    finalized_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    output_file_id: Mapped[str | None] = mapped_column(Text)
    error_file_id: Mapped[str | None] = mapped_column(Text)
    # OpenAI's `model` of the batch: the model every request is sent to first, when that is one model (revision
    # 0012); NULL when its requests start with different ones. Set once, when the batch is stored.
    model: Mapped[str | None] = mapped_column(Text)


class ApiCallback(Base):
    """A batch's completion callback: one per batch, claimed by one API instance at a time until delivered."""

    __tablename__ = "api_callback"
    __table_args__ = (
        Index(
            "api_callback_due_idx",
            "next_at",
            postgresql_where=text("delivered_at IS NULL AND given_up_at IS NULL"),
        ),
    )

    batch_id: Mapped[str] = mapped_column(Text, ForeignKey("batch.id", ondelete="CASCADE"), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    # The final batch object, as sent every time (the same bytes make the same signature on a retry).
    payload: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    next_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    given_up_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
