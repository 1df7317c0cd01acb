"""Where a request and a batch stand and what moves them: every statement that changes a status, and the table
of transitions they make (`TRANSITIONS_TABLE`), written once."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import TextClause
from sqlalchemy.ext.asyncio import AsyncConnection

from jobs.core.constants import MAX_MODELS_PER_CALL
from jobs.core.sql import sql
from jobs.core.states import BatchStatus, Outcome, PauseReason, RequestStatus

__all__ = [
    "BIRTHS",
    "DELETED",
    "STATUS_STATEMENTS",
    "TRANSITIONS",
    "TRANSITIONS_TABLE",
    "TRIGGERS",
    "CallRecord",
    "Cancelled",
    "FailRecord",
    "Lease",
    "LineCall",
    "Transition",
    "abandon",
    "cancel",
    "cancel_expired_requests",
    "delete",
    "expire_batches",
    "expire_leases",
    "finalize_batches",
    "give_back",
    "hold_for_run",
    "lane_off",
    "last_invalid_reply",
    "part_answers",
    "record_answer",
    "record_failure",
    "record_line_answer",
    "record_line_failure",
    "record_part",
    "refuse",
    "release_remote",
    "renew_lease",
    "resume_due_batches",
    "resume_paused",
    "retry_failed",
    "reuse",
    "start_batch",
    "take_lease",
]

# An expired batch's calls in flight end within a lease and a request timeout; for this long after expiry
# any request such a call put back to pending is cancelled too.
EXPIRY_SWEEP_SECONDS = 3600.0

# The worker, the feeder, the commands and the API call these functions; each runs on the connection it is given,
# so the caller keeps its transaction (the worker's AUTOCOMMIT engine, the feeder's tick, a command's
# `engine.begin()`). Statements that only move a request's queue mark (`enqueued_at`) stay with the feeder and the
# commands: they change where its job is, not where the request stands. The Postgres triggers (`TRIGGERS`)
# change no status: they follow the rows each statement here changes, to keep the batch's tallies and times.

Subject = Literal["request", "batch"]
# No trigger is an actor: the triggers of `TRIGGERS` change no status (a test reads their source to hold that).
Actor = Literal["worker", "feeder", "user"]

# The lifecycle, read top to bottom: what a request goes through, then what its batch does. `was` and `became`
# list every state the statement acts on or may leave the row in (a request of a cancelling batch that would
# go back to pending is cancelled instead); `function` is the one of this module that runs it. Written as a
# Markdown table so docs/design.md copies it as it is; `TRANSITIONS` is the same, as data, and a test holds it
# to `STATUS_STATEMENTS`.
TRANSITIONS_TABLE = """
| subject | was | event | became | by | function |
|---|---|---|---|---|---|
| request | pending | a worker takes the lease (due, its batch in_progress, its kind of upstream) | running | worker | take_lease |
| request | running | the lease holder renews its lease | running | worker | renew_lease |
| request | running, pending, cancelled | an answer is recorded, by whoever called (even late, even after a cancel) | completed | worker | record_answer |
| request | running | the lease holder records a failed call; the retry policy says which | pending, failed, cancelled | worker | record_failure |
| request | running | the worker stops while its call runs: the call is abandoned, no attempt spent | pending, cancelled | worker | abandon |
| request | running | no call was made (throttle, outage breaker, a twin, a stop): given back | pending, cancelled | worker | give_back |
| request | running | the call is forbidden by the batch's options (a paid model, --free-only) | failed | worker | refuse |
| request | running | an identical request's stored answer is reused (--dedupe) | completed | worker | reuse |
| request | running | a part of a record split in parts is answered (kept on its attempt): given back, due at once, for its next part | pending, cancelled | worker | record_part |
| request | running | its lease expired (its worker died): the call in flight is abandoned | pending, cancelled | feeder | expire_leases |
| request | remote | its line of a remote batch is an answer (stored as an attempt and a result, as a call's) | completed | worker | record_line_answer |
| request | remote | its line of a remote batch failed: it goes live, an attempt spent by the retry policy | pending, failed, cancelled | worker | record_line_failure |
| request | remote | its remote batch ended (or was never created) with no line for it: it goes live, unspent | pending, cancelled | worker | release_remote |
| request | remote | the Batch API is not enabled for the key (404/403 to a create): the batch runs live | pending, cancelled | worker | lane_off |
| request | pending, remote | its batch is cancelled (a remote one only while no remote batch holds it) | cancelled | user | cancel |
| request | pending, remote | its batch expired (remote: not in a remote batch; swept on every tick for a while after) | cancelled | feeder | cancel_expired_requests |
| request | failed | retry --failed: fresh attempts, the model chain from its start | pending | user | retry_failed |
| batch | validating | its requests are stored (submit) | in_progress | user | start_batch |
| batch | in_progress | a failed call parks it (credits, auth) or brings its spend to --max-cost (budget) | paused | worker | record_failure |
| batch | in_progress | an answer's cost brings its spend to --max-cost (budget) | paused | worker | record_answer |
| batch | in_progress | the daily free quota is spent (quota, until the day turns) | paused | worker | give_back |
| batch | in_progress, paused | its `orbatch run` stopped (interrupted; a quota pause too) | paused | user | hold_for_run |
| batch | paused | resume (with a higher --max-cost, if given) | in_progress | user | resume_paused |
| batch | paused | its resume_at passed (the quota's day turned, a park's wait is over) | in_progress | feeder | resume_due_batches |
| batch | validating, in_progress, paused | cancel: no new call starts; cancelled at once when none runs | cancelling, cancelled | user | cancel |
| batch | in_progress, cancelling | nothing left pending, running or remote | completed, cancelled | feeder | finalize_batches |
| batch | completed, in_progress | retry --failed found failed requests to run again | in_progress | user | retry_failed |
| batch | validating, in_progress, paused | past its completion window (batches made through the API) | expired | feeder | expire_batches |
| batch | completed, failed, cancelled, paused | delete, when no call and no remote batch runs: the batch and every row of it go | deleted | user | delete |
"""

# What a deleted batch becomes in the table: it is no state, the row is gone.
DELETED = "deleted"


@dataclass(frozen=True, slots=True)
class Transition:
    """One row of `TRANSITIONS_TABLE`: a request or a batch in one of `was` goes to one of `became` on `event`,
    made by `by` through this module's function `function`."""

    subject: Subject
    was: tuple[str, ...]
    event: str
    became: tuple[str, ...]
    by: Actor
    function: str


def _states(subject: str, cell: str) -> tuple[str, ...]:
    kind: type[RequestStatus] | type[BatchStatus] = RequestStatus if subject == "request" else BatchStatus
    # A typo in the table fails at import (ValueError), not when someone reads it wrong.
    return tuple(name if name == DELETED else kind(name).value for name in cell.split(", "))


def _parse(table: str) -> tuple[Transition, ...]:
    rows = [line.strip("| ").split(" | ") for line in table.strip().splitlines()[2:]]
    actors: dict[str, Actor] = {"worker": "worker", "feeder": "feeder", "user": "user"}
    subjects: dict[str, Subject] = {"request": "request", "batch": "batch"}
    return tuple(
        Transition(subjects[s], _states(s, was), event, _states(s, became), actors[by], function)
        for s, was, event, became, by, function in rows
    )


TRANSITIONS: tuple[Transition, ...] = _parse(TRANSITIONS_TABLE)

# Rows are born in a state by an INSERT where they are created; no statement here makes them.
BIRTHS: tuple[tuple[Subject, str, str], ...] = (
    ("batch", BatchStatus.VALIDATING, "jobs.submission.submit.submit_source: a submit stores its requests"),
    ("request", RequestStatus.PENDING, "jobs.submission.submit.submit_source: one per valid input line"),
    (
        "request",
        RequestStatus.REMOTE,
        "jobs.submission.submit.submit_source: a line the batch lane takes (--lane batch, or auto's pick)",
    ),
    (
        "batch",
        BatchStatus.FAILED,
        "jobs.api.creation._failed_batch: an API batch whose input file failed validation",
    ),
)

# Every trigger of the schema (a test reads them from Postgres), by the revision that made it and what it does.
# None changes a status, so none is in the table above: each follows the rows a statement changed, and every
# transition keeps the tallies and the API's times right without knowing of them. Revision 0006
# (migrations/versions/0006_tallies_and_outages.py) made the statement-level PL/pgSQL tally triggers, which read
# the statement's transition tables (a bulk cancel of a million requests is one aggregate); 0007
# (migrations/versions/0007_api.py) the row-level one on a batch's status.
TRIGGERS: dict[str, str] = {
    "orbatch_request_tally_insert": (
        "0006, 0015: new requests: batch_tally counts by status (`remote` since 0015), tries per finished request"
    ),
    "orbatch_request_tally_update": (
        "0006: every request status change above: batch_tally counts move from `was` to `became`, failed requests "
        "by minute (batch_minute_tally), tries per finished request (batch_tries_tally)"
    ),
    "orbatch_request_tally_delete": "0006: requests of a batch that remains: their counts and tries come off",
    "orbatch_attempt_tally_insert": (
        "0006, 0015: an attempt born finished (a reuse, a remote batch's line): calls, tokens, cost by batch, "
        "model and lane (0015), minute; errors"
    ),
    "orbatch_attempt_tally_update": (
        "0006, 0015 (by lane too): an attempt leaving in_flight (or rewritten: abandoned, then answered late) counts once, by batch, "
        "model and minute; its error by code"
    ),
    "orbatch_attempt_tally_delete": "0006: an unfired attempt taken back (give_back, refuse): its counts come off",
    "orbatch_result_tally_insert": (
        "0006, 0015: an answer: answers and fallbacks by model and its attempt's lane (a `:batch` variant's "
        "answer is no fallback from its base model), answers by minute"
    ),
    "orbatch_result_tally_delete": "0006: an answer deleted with its batch: its counts come off",
    "orbatch_batch_status_times": (
        "0007: before a batch's status changes: stamps cancelling_at and expired_at; a batch that runs again "
        "(resume, retry --failed) loses its API output and error files, made anew when it ends"
    ),
}


@dataclass(slots=True, frozen=True)
class Lease:
    """A request this worker now runs: what to send and the attempt row that records the call."""

    request_id: int
    batch_id: str
    attempt_id: int
    number: int
    failures: int
    chain_pos: int
    chain: list[str]
    models_sent: list[str]
    max_attempts: int
    free_only: bool
    fingerprint: str | None
    body: dict[str, Any]
    # Models of the chain passed over before the call (their context cannot hold the request), and how many
    # chain positions from `chain_pos` the call covers, those included: where a fallback goes next.
    models_skipped: list[str] = field(default_factory=list)
    span: int | None = None
    # The batch's options as stored (its identity): `feedback` false and `heal` true are read from them.
    options: dict[str, Any] = field(default_factory=dict)
    # A record summarised in parts (`--long split`): the most tokens a chunk of its text holds, the record and
    # the batch's template (None for a request sent whole).
    split_tokens: int | None = None
    record: dict[str, Any] | None = None
    template: dict[str, Any] | None = None


@dataclass(slots=True, frozen=True)
class CallRecord:
    """How one call went, as its attempt row stores it."""

    outcome: Outcome
    started_at: datetime | None = None
    latency_ms: int | None = None
    http_status: int | None = None
    model: str | None = None
    provider: str | None = None
    generation_id: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reasoning_tokens: int | None = None
    cached_tokens: int | None = None
    cost: Decimal | None = None
    cost_estimated: bool = False
    error_code: str | None = None
    error_message: str | None = None
    # An `invalid_output` attempt's reply, for the correction turn of the next attempt; a part's answer.
    reply: str | None = None
    # The part of a split request the call asked for (`chunk 2/7`, `combine 1.2/3`, `final`).
    part: str | None = None

    def params(self, attempt_id: int) -> dict[str, Any]:
        """The bind parameters of `_ATTEMPT_DONE` for this call on that attempt row."""
        return {
            "attempt_id": attempt_id,
            "started_at": self.started_at,
            "outcome": self.outcome.value,
            "latency_ms": self.latency_ms,
            "http_status": self.http_status,
            "model": self.model,
            "provider": self.provider,
            "generation_id": self.generation_id,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cached_tokens": self.cached_tokens,
            "cost": self.cost,
            "cost_estimated": self.cost_estimated,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "reply": self.reply,
            "part": self.part,
        }


@dataclass(slots=True, frozen=True)
class FailRecord:
    """What recording a failed attempt did: moved the request on, and the pause it caused, if any."""

    moved: bool
    recorded: bool
    paused: str | None


@dataclass(slots=True, frozen=True)
class Cancelled:
    """What a cancel did: whether it moved the batch, and how many of its queued requests it cancelled."""

    batches: int
    requests: int


# ============================================================================================================
# The worker's statements. Each is a single statement, atomic on its own, run on an AUTOCOMMIT engine. Every
# statement that records a call acts only while its attempt row is still `in_flight` (or `abandoned`, for an
# answer that arrived after the feeder gave the lease up): run again after a connection dropped at its commit,
# it finds the row recorded and changes nothing, so a call's cost is added to its batch once. Each statement
# updates the batch row at most once.
# ============================================================================================================

# The lease and the attempt row are one statement: a worker that dies after it leaves a lease that
# expires and an in-flight attempt that the feeder marks abandoned, never a call with no record.
# The models a call is sent: the chain from `chain_pos`, less the models whose context (the upstream's listed
# `context_length`) cannot hold the request (`context_needed`), up to MAX_MODELS_PER_CALL of them (one for an
# embeddings call: OpenRouter's embeddings API takes one `model`, no `models` chain). The models passed over
# before the last one sent are the attempt's `models_skipped`; `span` is how many chain positions the call
# covers, skipped ones included, so a fallback moves past them. A model of unknown context is taken to fit; when
# no model left in the chain fits (a catalogue that changed since submit), the window is sent as it is, and the
# upstream's answer says why.
_TAKE_LEASE = sql(
    f"""
    WITH leased AS (
        UPDATE request r SET status = {{R.RUNNING}}, attempts = r.attempts + 1, lease_owner = :owner,
               lease_expires_at = now() + make_interval(secs => :lease_seconds), enqueued_at = NULL
        FROM batch b
        WHERE r.id = :request_id AND r.attempts = :attempts AND r.status = {{R.PENDING}}
          AND r.next_attempt_at <= now() AND b.id = r.batch_id AND b.status = {{B.IN_PROGRESS}}
          AND b.simulated = :simulated
        RETURNING r.id, r.batch_id, r.attempts, r.failures, r.body, b.max_attempts, b.free_only, r.fingerprint,
                  r.context_needed, b.options, r.split_tokens,
                  CASE WHEN r.split_tokens IS NOT NULL THEN r.record END AS record,
                  CASE WHEN r.split_tokens IS NOT NULL THEN b.template END AS template,
                  coalesce(r.models, b.models) AS chain,
                  CASE WHEN r.chain_pos < cardinality(coalesce(r.models, b.models)) THEN r.chain_pos ELSE 0 END
                      AS chain_pos,
                  CASE WHEN r.body ? 'messages' THEN {MAX_MODELS_PER_CALL} ELSE 1 END AS per_call
    ), picked AS (
        SELECT l.id,
               coalesce(w.sent, l.chain[l.chain_pos + 1 : l.chain_pos + l.per_call]) AS models_sent,
               w.skipped AS models_skipped, coalesce(w.last, l.per_call) AS span
        FROM leased l CROSS JOIN LATERAL (
            SELECT array_agg(c.model ORDER BY c.pos) FILTER (WHERE c.fits AND c.rank <= l.per_call) AS sent,
                   array_agg(c.model ORDER BY c.pos)
                       FILTER (WHERE NOT c.fits AND c.rank < least(l.per_call, c.total)) AS skipped,
                   max(c.pos) FILTER (WHERE c.fits AND c.rank <= l.per_call) AS last
            FROM (
                SELECT f.model, f.pos, f.fits,
                       count(*) FILTER (WHERE f.fits) OVER (ORDER BY f.pos) AS rank,
                       count(*) FILTER (WHERE f.fits) OVER () AS total
                FROM (
                    SELECT m.model, m.pos, l.context_needed IS NULL OR p.context_length IS NULL
                                           OR p.context_length >= l.context_needed AS fits
                    FROM unnest(l.chain[l.chain_pos + 1 :]) WITH ORDINALITY AS m(model, pos)
                    LEFT JOIN model_price p ON p.upstream = CAST(:upstream AS text) AND p.id = m.model
                ) f
            ) c
        ) w
    ), attempt_row AS (
        INSERT INTO attempt (request_id, batch_id, number, worker, models_sent, models_skipped)
        SELECT l.id, l.batch_id, l.attempts, :owner, p.models_sent, p.models_skipped
        FROM leased l JOIN picked p ON p.id = l.id
        RETURNING id, models_sent, models_skipped
    )
    SELECT leased.*, attempt_row.id AS attempt_id, attempt_row.models_sent, attempt_row.models_skipped,
           picked.span
    FROM leased, attempt_row, picked
    """  # noqa: S608 - built from this module's constants; values are bound parameters
)

_RENEW = sql(
    "UPDATE request SET lease_expires_at = now() + make_interval(secs => :lease_seconds)"
    " WHERE id = :request_id AND status = {R.RUNNING} AND lease_owner = :owner"
)

# Records the call on its attempt row, only while the row is open: `in_flight`, or `abandoned` by the feeder
# after a lease lapsed (the answer still counts). Returns what the call cost, for the batch's spend.
_ATTEMPT_DONE = """
    attempt_done AS (
        UPDATE attempt SET started_at = coalesce(:started_at, started_at), finished_at = now(),
               latency_ms = :latency_ms, http_status = :http_status, outcome = :outcome, model = :model,
               provider = :provider, generation_id = :generation_id, prompt_tokens = :prompt_tokens,
               completion_tokens = :completion_tokens, reasoning_tokens = :reasoning_tokens,
               cached_tokens = :cached_tokens, cost = :cost, cost_estimated = :cost_estimated,
               error_code = :error_code, error_message = :error_message,
               reply = :reply, part = :part
        WHERE id = :attempt_id AND outcome IN ({O.IN_FLIGHT}, {O.ABANDONED})
        RETURNING coalesce(cost, 0) AS cost
    )"""

# The one update of the batch row a recorded call makes, when it has something to say: a capped batch's spend
# grows by the call's cost (and the batch pauses, `budget`, once the spend reaches the cap, so no call starts
# after that: the overshoot is at most the calls already in flight); a call that parks pauses it. `s` gives the
# call's cost and whether it parks.
_BATCH_AFTER_CALL = """
    batch_done AS (
        UPDATE batch b SET
            spent = b.spent + CASE WHEN b.max_cost IS NOT NULL THEN s.cost ELSE 0 END,
            status = CASE WHEN b.status <> {B.IN_PROGRESS} THEN b.status
                          WHEN s.park OR b.spent + s.cost >= b.max_cost THEN {B.PAUSED}
                          ELSE b.status END,
            pause_reason = CASE WHEN b.status <> {B.IN_PROGRESS} THEN b.pause_reason
                                WHEN s.park THEN CAST(:park_reason AS text)
                                WHEN b.spent + s.cost >= b.max_cost THEN {P.BUDGET}
                                ELSE b.pause_reason END,
            pause_message = CASE WHEN b.status <> {B.IN_PROGRESS} THEN b.pause_message
                                 WHEN s.park THEN CAST(:error_message AS text)
                                 WHEN b.spent + s.cost >= b.max_cost
                                 THEN 'The batch has spent ' || (b.spent + s.cost)::text
                                      || ' USD, reaching its --max-cost of ' || b.max_cost::text
                                      || ' USD. Raise it with `orbatch resume ' || b.id || ' --max-cost USD`.'
                                 ELSE b.pause_message END,
            resume_at = CASE WHEN b.status <> {B.IN_PROGRESS} THEN b.resume_at
                             WHEN s.park THEN CAST(:resume_at AS timestamptz)
                             WHEN b.spent + s.cost >= b.max_cost THEN NULL
                             ELSE b.resume_at END
        FROM s
        WHERE b.id = :batch_id AND (s.park OR (b.max_cost IS NOT NULL AND s.cost > 0))
        RETURNING b.status, b.pause_reason
    )"""

# Completes the request whoever holds it now: a slow worker whose lease was taken over still has a good
# answer, and an answer paid for is kept even when the request was cancelled while its call ran. The result's
# primary key is the request, so a second answer is never stored.
_COMPLETE = sql(
    f"""
    WITH {_ATTEMPT_DONE},
    s AS (SELECT cost, false AS park FROM attempt_done),
    {_BATCH_AFTER_CALL},
    completed AS (
        UPDATE request SET status = {{R.COMPLETED}}, finished_at = now(), lease_owner = NULL,
               lease_expires_at = NULL, enqueued_at = NULL, last_error = NULL
        WHERE id = :request_id AND status IN ({{R.RUNNING}}, {{R.PENDING}}, {{R.CANCELLED}})
          AND EXISTS (SELECT 1 FROM attempt_done)
        RETURNING id
    )
    INSERT INTO result (request_id, attempt_id, body, content, finish_reason, model)
    SELECT completed.id, :attempt_id, CAST(:body AS jsonb), :content, :finish_reason, :model FROM completed
    ON CONFLICT (request_id) DO NOTHING
    RETURNING request_id
    """  # noqa: S608 - built from this module's constants; values are bound parameters
)

# Only the lease holder moves the request on; a worker that lost its lease records its attempt only. A request
# of a cancelling batch that would go back to pending is cancelled instead, so the cancel ends.
_FAIL = sql(
    f"""
    WITH before AS (SELECT status FROM batch WHERE id = :batch_id),
    {_ATTEMPT_DONE},
    moved AS (
        UPDATE request r SET
               status = CASE WHEN :status = {{R.PENDING}} AND b.status = {{B.CANCELLING}} THEN {{R.CANCELLED}}
                             ELSE :status END,
               failures = :failures, chain_pos = :chain_pos,
               next_attempt_at = now() + make_interval(secs => :delay_seconds), last_error = :error_message,
               lease_owner = NULL, lease_expires_at = NULL, enqueued_at = NULL,
               finished_at = CASE WHEN :status <> {{R.PENDING}} OR b.status = {{B.CANCELLING}} THEN now() END
        FROM batch b
        WHERE r.id = :request_id AND r.status = {{R.RUNNING}} AND r.lease_owner = :owner AND b.id = r.batch_id
          AND EXISTS (SELECT 1 FROM attempt_done)
        RETURNING r.status
    ),
    s AS (
        SELECT coalesce((SELECT cost FROM attempt_done), 0) AS cost,
               (CAST(:park_reason AS text) IS NOT NULL AND EXISTS (SELECT 1 FROM moved)) AS park
    ),
    {_BATCH_AFTER_CALL}
    SELECT (SELECT count(*) FROM moved) AS moved, (SELECT count(*) FROM attempt_done) AS recorded,
           (SELECT d.pause_reason FROM batch_done d, before
            WHERE d.status = {{B.PAUSED}} AND before.status = {{B.IN_PROGRESS}}) AS paused
    """  # noqa: S608 - built from this module's constants; values are bound parameters
)

# The worker stops while its call runs: the attempt is `abandoned` and the request is given back unfinished,
# spending none of its attempts (or cancelled, when its batch is cancelling).
_ABANDON = sql(
    f"""
    WITH {_ATTEMPT_DONE}
    UPDATE request r SET
           status = CASE WHEN b.status = {{B.CANCELLING}} THEN {{R.CANCELLED}} ELSE {{R.PENDING}} END,
           finished_at = CASE WHEN b.status = {{B.CANCELLING}} THEN now() END,
           lease_owner = NULL, lease_expires_at = NULL, enqueued_at = NULL, next_attempt_at = now()
    FROM batch b
    WHERE r.id = :request_id AND r.status = {{R.RUNNING}} AND r.lease_owner = :owner AND b.id = r.batch_id
      AND EXISTS (SELECT 1 FROM attempt_done)
    """  # noqa: S608 - built from this module's constants; values are bound parameters
)

# No call was made (the throttle, the outage breaker or a twin said wait; the worker is stopping): the attempt
# row goes and the request is as it was before the lease, due again after the wait, or cancelled when its batch
# is cancelling. With a reason, the batch is paused until then (the daily quota). Taking the attempt count back
# would give the next job the id of the one just run, whose arq keys may outlive it and which a feeder may be
# about to mark queued (stranding the request until the requeue sweep); `feeds` moves on so the id is new.
_UNLEASE = sql(
    """
    WITH unfired AS (
        DELETE FROM attempt WHERE id = :attempt_id AND outcome = {O.IN_FLIGHT} RETURNING request_id
    ), released AS (
        UPDATE request r SET
               status = CASE WHEN b.status = {B.CANCELLING} THEN {R.CANCELLED} ELSE {R.PENDING} END,
               finished_at = CASE WHEN b.status = {B.CANCELLING} THEN now() END,
               attempts = r.attempts - 1, feeds = r.feeds + 1, lease_owner = NULL, lease_expires_at = NULL,
               enqueued_at = NULL, next_attempt_at = now() + make_interval(secs => :delay_seconds)
        FROM batch b
        WHERE r.id = :request_id AND r.status = {R.RUNNING} AND r.lease_owner = :owner AND b.id = r.batch_id
          AND r.id IN (SELECT request_id FROM unfired)
        RETURNING r.batch_id
    ), parked AS (
        UPDATE batch SET status = {B.PAUSED}, pause_reason = :park_reason, pause_message = :park_message,
               resume_at = now() + make_interval(secs => :delay_seconds)
        WHERE id = (SELECT batch_id FROM released) AND CAST(:park_reason AS text) IS NOT NULL
          AND status = {B.IN_PROGRESS}
        RETURNING id
    )
    SELECT (SELECT count(*) FROM parked) AS parked
    """
)

# A part of a record split in parts is answered (`--long split`): the call is recorded with its part and the
# part's answer (`reply`), its cost spent as an answer's, and the request goes back to pending, due at once, for
# its next part (or cancelled, when its batch is cancelling). Only the lease holder moves it; an answer that
# arrives after the lease was lost is still kept on its attempt, so whoever asks next finds the part answered.
# Each part has the batch's attempts: its failures start again from none.
_PART = sql(
    f"""
    WITH {_ATTEMPT_DONE},
    s AS (SELECT cost, false AS park FROM attempt_done),
    {_BATCH_AFTER_CALL},
    moved AS (
        UPDATE request r SET
               status = CASE WHEN b.status = {{B.CANCELLING}} THEN {{R.CANCELLED}} ELSE {{R.PENDING}} END,
               finished_at = CASE WHEN b.status = {{B.CANCELLING}} THEN now() END,
               failures = 0, last_error = NULL, lease_owner = NULL, lease_expires_at = NULL, enqueued_at = NULL,
               next_attempt_at = now()
        FROM batch b
        WHERE r.id = :request_id AND r.status = {{R.RUNNING}} AND r.lease_owner = :owner AND b.id = r.batch_id
          AND EXISTS (SELECT 1 FROM attempt_done)
        RETURNING r.id
    )
    SELECT (SELECT count(*) FROM attempt_done) AS recorded, (SELECT count(*) FROM moved) AS moved
    """  # noqa: S608 - built from this module's constants; values are bound parameters
)

# A call the batch's options forbid (a paid model in a free-only batch) is never made: the request fails.
_REFUSE = sql(
    """
    WITH unfired AS (
        DELETE FROM attempt WHERE id = :attempt_id AND outcome = {O.IN_FLIGHT} RETURNING request_id
    )
    UPDATE request SET status = {R.FAILED}, attempts = attempts - 1, lease_owner = NULL, lease_expires_at = NULL,
           enqueued_at = NULL, finished_at = now(), last_error = :message
    WHERE id = :request_id AND status = {R.RUNNING} AND lease_owner = :owner
      AND id IN (SELECT request_id FROM unfired)
    """
)

# A request identical to one already answered takes a copy of that answer instead of a call; its attempt
# row says so (outcome `reused`, `reused_from`) and costs nothing.
_REUSE = sql(
    """
    WITH source AS (
        SELECT res.request_id, res.body, res.content, res.finish_reason, res.model
        FROM request q JOIN result res ON res.request_id = q.id
        WHERE q.fingerprint = :fingerprint AND q.id <> :request_id
        LIMIT 1
    ), attempt_done AS (
        UPDATE attempt a SET outcome = {O.REUSED}, finished_at = now(), latency_ms = 0, cost = 0,
               reused_from = source.request_id, model = source.model
        FROM source WHERE a.id = :attempt_id AND a.outcome = {O.IN_FLIGHT}
        RETURNING a.id
    ), completed AS (
        UPDATE request SET status = {R.COMPLETED}, finished_at = now(), lease_owner = NULL, lease_expires_at = NULL,
               enqueued_at = NULL, last_error = NULL
        WHERE id = :request_id AND status = {R.RUNNING} AND lease_owner = :owner
          AND EXISTS (SELECT 1 FROM attempt_done)
        RETURNING id
    )
    INSERT INTO result (request_id, attempt_id, body, content, finish_reason, model)
    SELECT completed.id, :attempt_id, source.body, source.content, source.finish_reason, source.model
    FROM completed, source
    ON CONFLICT (request_id) DO NOTHING
    RETURNING request_id
    """
)


# ============================================================================================================
# The batch lane's statements (worker/remote_batches.py): a request in a remote batch of OpenRouter's Batch API
# is `remote`, which no lease takes, until its line is stored or its remote batch ends without one. Each acts
# only on a request still `remote` in the remote batch named, so a page of lines stored twice (a driver that
# lost its lease, a restart) stores each line once, and nothing that went live is touched again.
# ============================================================================================================

# A request the batch lane gives up on would never run in a batch that stopped: it is cancelled instead.
_STOPPED = "b.status IN ({B.CANCELLING}, {B.CANCELLED}, {B.EXPIRED})"

# The attempt row of one line, born finished, numbered after the request's calls, in the batch lane; an
# `invalid_output` line keeps its reply, as a call's attempt does, for the correction turn of the live retry.
_LINE_ATTEMPT = """
    attempt_row AS (
        INSERT INTO attempt (request_id, batch_id, number, started_at, finished_at, worker, models_sent, outcome,
                             latency_ms, http_status, model, provider, generation_id, prompt_tokens,
                             completion_tokens, reasoning_tokens, cached_tokens, cost, cost_estimated, error_code,
                             error_message, reply, lane, remote_batch_id)
        SELECT m.id, m.batch_id, m.number, coalesce(CAST(:started_at AS timestamptz), now()), now(), :owner,
               CAST(:models_sent AS text[]), :outcome, :latency_ms, :http_status, :model, :provider,
               :generation_id, :prompt_tokens, :completion_tokens, :reasoning_tokens, :cached_tokens, :cost,
               :cost_estimated, :error_code, :error_message, :reply, {L.BATCH}, :remote_batch_id
        FROM member m
        ON CONFLICT (remote_batch_id, request_id) WHERE remote_batch_id IS NOT NULL DO NOTHING
        RETURNING id, coalesce(cost, 0) AS cost
    )"""

_LINE_MEMBER = """
    member AS (
        SELECT r.id, r.batch_id, r.attempts + 1 AS number FROM request r
        WHERE r.id = :request_id AND r.status = {R.REMOTE} AND r.remote_batch_id = :remote_batch_id
        FOR UPDATE
    )"""

# A line answered: the attempt, the result and the completed request in one statement, its cost spent (a capped
# batch may pause on it: the lines are paid whatever happens).
_LINE_ANSWER = sql(
    f"""
    WITH {_LINE_MEMBER},
    {_LINE_ATTEMPT},
    completed AS (
        UPDATE request r SET status = {{R.COMPLETED}}, attempts = m.number, finished_at = now(),
               lease_owner = NULL, lease_expires_at = NULL, enqueued_at = NULL, last_error = NULL
        FROM member m
        WHERE r.id = m.id AND r.status = {{R.REMOTE}} AND EXISTS (SELECT 1 FROM attempt_row)
        RETURNING r.id
    ),
    s AS (SELECT cost, false AS park FROM attempt_row),
    {_BATCH_AFTER_CALL}
    INSERT INTO result (request_id, attempt_id, body, content, finish_reason, model)
    SELECT completed.id, attempt_row.id, CAST(:body AS jsonb), :content, :finish_reason, :model
    FROM completed, attempt_row
    ON CONFLICT (request_id) DO NOTHING
    RETURNING request_id
    """  # noqa: S608 - built from this module's constants; values are bound parameters
)

# A line failed (or its answer is unusable): recorded as a failed call of the request's first model, and the
# request goes live as the retry policy says (`:status`: pending, or failed when its attempts are spent).
_LINE_FAILURE = sql(
    f"""
    WITH {_LINE_MEMBER},
    {_LINE_ATTEMPT},
    moved AS (
        UPDATE request r SET
               status = CASE WHEN :status = {{R.PENDING}} AND {_STOPPED} THEN {{R.CANCELLED}} ELSE :status END,
               attempts = m.number, failures = :failures, chain_pos = :chain_pos,
               next_attempt_at = now() + make_interval(secs => :delay_seconds), last_error = :error_message,
               enqueued_at = NULL,
               finished_at = CASE WHEN :status <> {{R.PENDING}} OR {_STOPPED} THEN now() END
        FROM member m, batch b
        WHERE r.id = m.id AND b.id = r.batch_id AND r.status = {{R.REMOTE}} AND EXISTS (SELECT 1 FROM attempt_row)
        RETURNING r.status
    ),
    s AS (SELECT coalesce((SELECT cost FROM attempt_row), 0) AS cost, false AS park),
    {_BATCH_AFTER_CALL}
    SELECT (SELECT status FROM moved) AS status
    """  # noqa: S608 - built from this module's constants; values are bound parameters
)

# A remote batch ended (completed, failed, expired, cancelled, gone) and every page of its lines was stored, or
# it was never created (refused, or not found after a lost create): its requests still waiting go live, with
# none of their attempts spent (no line of theirs was answered or billed), or are cancelled in a stopped batch.
_RELEASE_REMOTE = sql(
    f"""
    WITH target AS (
        SELECT id FROM request WHERE remote_batch_id = :remote_batch_id AND status = {{R.REMOTE}}
        ORDER BY id FOR UPDATE
    )
    UPDATE request r SET status = CASE WHEN {_STOPPED} THEN {{R.CANCELLED}} ELSE {{R.PENDING}} END,
           finished_at = CASE WHEN {_STOPPED} THEN now() END, next_attempt_at = now(), enqueued_at = NULL,
           last_error = :reason
    FROM target, batch b
    WHERE r.id = target.id AND b.id = r.batch_id AND r.status = {{R.REMOTE}}
    RETURNING r.id
    """  # noqa: S608 - built from this module's constants; values are bound parameters
)

# A create answered 404 or 403: OpenRouter's Batch API is not enabled for the key. Every request of the batch in
# the lane that no created remote batch holds goes live; the batch keeps a note of why, set once, so it is said
# once (the caller marks the refused remote batch, and those not sent, `refused` in the same transaction).
_LANE_OFF = sql(
    f"""
    WITH noted AS (
        UPDATE batch SET lane_note = :note WHERE id = :batch_id AND lane_note IS NULL RETURNING id
    ), target AS (
        SELECT r.id FROM request r LEFT JOIN remote_batch rb ON rb.id = r.remote_batch_id
        WHERE r.batch_id = :batch_id AND r.status = {{R.REMOTE}}
          AND (r.remote_batch_id IS NULL OR rb.state IN ({{S.READY}}, {{S.REFUSED}}))
        ORDER BY r.id FOR UPDATE OF r
    ), released AS (
        UPDATE request r SET status = CASE WHEN {_STOPPED} THEN {{R.CANCELLED}} ELSE {{R.PENDING}} END,
               finished_at = CASE WHEN {_STOPPED} THEN now() END, next_attempt_at = now(), enqueued_at = NULL
        FROM target, batch b
        WHERE r.id = target.id AND b.id = r.batch_id AND r.status = {{R.REMOTE}}
        RETURNING r.id
    )
    SELECT (SELECT count(*) FROM noted) AS noted, (SELECT count(*) FROM released) AS released
    """  # noqa: S608 - built from this module's constants; values are bound parameters
)

# ============================================================================================================
# The feeder's statements: the recovery path for what a worker did not finish, and the end of a batch.
# ============================================================================================================

# A dead worker's leases: its requests go back to pending (cancelled, for a cancelling batch) and its calls in
# flight are marked abandoned. Multi-row updates of requests lock them in id order, so two of them never
# deadlock each other.
_EXPIRE_LEASES = sql(
    """
    WITH target AS (
        SELECT id FROM request WHERE status = {R.RUNNING} AND lease_expires_at < now() ORDER BY id FOR UPDATE
    ), expired AS (
        UPDATE request r SET
               status = CASE WHEN b.status = {B.CANCELLING} THEN {R.CANCELLED} ELSE {R.PENDING} END,
               finished_at = CASE WHEN b.status = {B.CANCELLING} THEN now() END,
               lease_owner = NULL, lease_expires_at = NULL, enqueued_at = NULL, next_attempt_at = now()
        FROM target, batch b
        WHERE r.id = target.id AND b.id = r.batch_id AND r.status = {R.RUNNING} AND r.lease_expires_at < now()
        RETURNING r.id, r.attempts
    )
    UPDATE attempt a SET outcome = {O.ABANDONED}, finished_at = now(),
           error_message = 'the worker running this call stopped before recording it'
    FROM expired e WHERE a.request_id = e.id AND a.number = e.attempts AND a.outcome = {O.IN_FLIGHT}
    RETURNING a.request_id
    """
)

# A parked batch whose wait is over runs again; its requests' queue marks are dropped so they are re-fed.
_RESUME_DUE_BATCHES = sql(
    """
    WITH resumed AS (
        UPDATE batch SET status = {B.IN_PROGRESS}, pause_reason = NULL, pause_message = NULL, resume_at = NULL
        WHERE status = {B.PAUSED} AND resume_at IS NOT NULL AND resume_at <= now()
        RETURNING id
    ), target AS (
        SELECT r.id FROM request r JOIN resumed ON r.batch_id = resumed.id
        WHERE r.status = {R.PENDING} AND r.enqueued_at IS NOT NULL ORDER BY r.id FOR UPDATE OF r
    ), cleared AS (
        UPDATE request r SET enqueued_at = NULL FROM target WHERE r.id = target.id
    )
    SELECT count(*) FROM resumed
    """
)

# A batch with nothing left to run is done: completed, or cancelled when it was cancelling. A request in the
# batch lane is not done until its remote batch's line is stored or that batch ends without one.
_FINALIZE = sql(
    """
    UPDATE batch b SET status = CASE WHEN b.status = {B.CANCELLING} THEN {B.CANCELLED} ELSE {B.COMPLETED} END,
           finished_at = now()
    WHERE b.status IN ({B.IN_PROGRESS}, {B.CANCELLING})
      AND NOT EXISTS (
          SELECT 1 FROM request r
          WHERE r.batch_id = b.id AND r.status IN ({R.PENDING}, {R.RUNNING}, {R.REMOTE})
      )
    RETURNING b.id
    """
)

# A batch past its completion window (one created through the API) expires: no new call starts, and its
# unfinished requests are cancelled (its error file reports them as `batch_expired`); finished ones are kept.
_EXPIRE_BATCHES = sql(
    """
    UPDATE batch SET status = {B.EXPIRED}, pause_reason = NULL, pause_message = NULL, resume_at = NULL,
           finished_at = now()
    WHERE expires_at IS NOT NULL AND expires_at <= now()
      AND status IN ({B.VALIDATING}, {B.IN_PROGRESS}, {B.PAUSED})
    RETURNING id
    """
)

# Calls in flight at expiry end as they would; one that would run its request again puts it back to pending,
# so requests of lately expired batches are cancelled on every tick, not only at the moment of expiry. A request
# of the batch lane that no remote batch holds yet is cancelled too; one in a remote batch waits for its line.
_CANCEL_EXPIRED_REQUESTS = sql(
    """
    WITH target AS (
        SELECT r.id FROM request r JOIN batch b ON b.id = r.batch_id
        WHERE b.status = {B.EXPIRED} AND b.expired_at > now() - make_interval(secs => :sweep)
          AND (r.status = {R.PENDING} OR (r.status = {R.REMOTE} AND r.remote_batch_id IS NULL))
        ORDER BY r.id FOR UPDATE OF r
    )
    UPDATE request r SET status = {R.CANCELLED}, finished_at = now(), enqueued_at = NULL,
           last_error = 'batch_expired'
    FROM target WHERE r.id = target.id
      AND (r.status = {R.PENDING} OR (r.status = {R.REMOTE} AND r.remote_batch_id IS NULL))
    """
)

# ============================================================================================================
# A user's statements: submit, resume, hold, cancel, retry, delete (the CLI, the API and the pages).
# ============================================================================================================

_START_BATCH = sql(
    "UPDATE batch SET status = {B.IN_PROGRESS}, total = :total, invalid_lines = :invalid, started_at = now()"
    " WHERE id = :batch_id AND status = {B.VALIDATING}"
)

_RESUME_PAUSED = sql(
    """
    WITH resumed AS (
        UPDATE batch SET status = {B.IN_PROGRESS}, pause_reason = NULL, pause_message = NULL, resume_at = NULL,
               max_cost = coalesce(CAST(:max_cost AS numeric), max_cost)
        WHERE id = :batch_id AND status = {B.PAUSED}
        RETURNING id
    ), target AS (
        SELECT r.id FROM request r JOIN resumed ON r.batch_id = resumed.id
        WHERE r.status = {R.PENDING} ORDER BY r.id FOR UPDATE OF r
    ), cleared AS (
        UPDATE request r SET enqueued_at = NULL, next_attempt_at = LEAST(r.next_attempt_at, now())
        FROM target WHERE r.id = target.id
    )
    SELECT count(*) FROM resumed
    """
)

_HOLD_FOR_RUN = sql(
    "UPDATE batch SET status = {B.PAUSED}, pause_reason = {P.INTERRUPTED}, pause_message = :message,"
    " resume_at = NULL WHERE id = :batch_id"
    # Waiting for the quota's day too: when it turns, the batch waits for its run rather than a fleet worker.
    " AND (status = {B.IN_PROGRESS} OR (status = {B.PAUSED} AND pause_reason = {P.QUOTA}))"
)

# No new call starts for a cancelling batch; calls in flight finish and are kept, then the feeder marks
# the batch cancelled (at once, when nothing was in flight: `_CANCELLED_IF_IDLE`). Requests of the batch lane
# that no remote batch holds yet are cancelled with the pending ones; a remote batch's are left to its driver,
# which passes the cancel on to OpenRouter (where allowed) and stores whatever it still answers, as it is paid.
_CANCEL = sql(
    """
    WITH batch_row AS (
        UPDATE batch SET status = {B.CANCELLING}, pause_reason = NULL, pause_message = NULL, resume_at = NULL
        WHERE id = :batch_id AND status IN ({B.VALIDATING}, {B.IN_PROGRESS}, {B.PAUSED})
        RETURNING id
    ), target AS (
        SELECT r.id FROM request r JOIN batch_row ON r.batch_id = batch_row.id
        WHERE r.status = {R.PENDING} OR (r.status = {R.REMOTE} AND r.remote_batch_id IS NULL)
        ORDER BY r.id FOR UPDATE OF r
    ), cancelled AS (
        UPDATE request r SET status = {R.CANCELLED}, finished_at = now(), enqueued_at = NULL
        FROM target WHERE r.id = target.id
          AND (r.status = {R.PENDING} OR (r.status = {R.REMOTE} AND r.remote_batch_id IS NULL))
        RETURNING r.id
    )
    SELECT (SELECT count(*) FROM batch_row) AS batches, (SELECT count(*) FROM cancelled) AS requests
    """
)

_CANCELLED_IF_IDLE = sql(
    """
    UPDATE batch SET status = {B.CANCELLED}, finished_at = now()
    WHERE id = :batch_id AND status = {B.CANCELLING}
      AND NOT EXISTS (
          SELECT 1 FROM request WHERE batch_id = :batch_id AND status IN ({R.PENDING}, {R.RUNNING}, {R.REMOTE})
      )
    """
)

_RETRY_FAILED = sql(
    """
    WITH target AS (
        SELECT id FROM request WHERE batch_id = :batch_id AND status = {R.FAILED} ORDER BY id FOR UPDATE
    ), retried AS (
        UPDATE request r SET status = {R.PENDING}, failures = 0, chain_pos = 0, next_attempt_at = now(),
               enqueued_at = NULL, finished_at = NULL, last_error = NULL
        FROM target WHERE r.id = target.id AND r.status = {R.FAILED}
        RETURNING r.id
    ), reopened AS (
        UPDATE batch SET status = {B.IN_PROGRESS}, finished_at = NULL
        WHERE id = :batch_id AND status IN ({B.COMPLETED}, {B.IN_PROGRESS}) AND EXISTS (SELECT 1 FROM retried)
        RETURNING id
    )
    SELECT count(*) FROM retried
    """
)

# Only a batch that no call is running for goes: its requests, attempts, results and tallies with it. A remote
# batch that may exist on OpenRouter's side (sent, not over) holds it too: its lines are paid and are stored.
_DELETE = sql(
    """
    DELETE FROM batch b WHERE b.id = :batch_id
      AND b.status IN ({B.COMPLETED}, {B.FAILED}, {B.CANCELLED}, {B.PAUSED})
      AND NOT EXISTS (SELECT 1 FROM request r WHERE r.batch_id = b.id AND r.status = {R.RUNNING})
      AND NOT EXISTS (
          SELECT 1 FROM remote_batch rb
          WHERE rb.batch_id = b.id AND rb.state IN ({S.SENDING}, {S.RUNNING}, {S.COLLECTING})
      )
    RETURNING b.total
    """
)

# Every statement of this module that moves a status, by the function that runs it: what a test holds
# `TRANSITIONS` to, and the answer to "which SQL does this transition run".
STATUS_STATEMENTS: dict[str, tuple[TextClause, ...]] = {
    "take_lease": (_TAKE_LEASE,),
    "renew_lease": (_RENEW,),
    "record_answer": (_COMPLETE,),
    "record_failure": (_FAIL,),
    "abandon": (_ABANDON,),
    "give_back": (_UNLEASE,),
    "refuse": (_REFUSE,),
    "reuse": (_REUSE,),
    "record_part": (_PART,),
    "expire_leases": (_EXPIRE_LEASES,),
    "record_line_answer": (_LINE_ANSWER,),
    "record_line_failure": (_LINE_FAILURE,),
    "release_remote": (_RELEASE_REMOTE,),
    "lane_off": (_LANE_OFF,),
    "resume_due_batches": (_RESUME_DUE_BATCHES,),
    "finalize_batches": (_FINALIZE,),
    "expire_batches": (_EXPIRE_BATCHES,),
    "cancel_expired_requests": (_CANCEL_EXPIRED_REQUESTS,),
    "start_batch": (_START_BATCH,),
    "resume_paused": (_RESUME_PAUSED,),
    "hold_for_run": (_HOLD_FOR_RUN,),
    "cancel": (_CANCEL, _CANCELLED_IF_IDLE),
    "retry_failed": (_RETRY_FAILED,),
    "delete": (_DELETE,),
}


# --- the worker -----------------------------------------------------------------------------------------------


# The request's latest reply that failed its schema, before this attempt: what a correction turn quotes. A
# read, not a transition; the attempt_request_number_key index finds it.
_LAST_INVALID = sql(
    """
    SELECT reply, error_message FROM attempt
    WHERE request_id = :request_id AND number < :number AND error_code = 'invalid_output' AND reply IS NOT NULL
    ORDER BY number DESC LIMIT 1
    """
)


# The answered parts of a split request: what its next call builds on. A read, not a transition. A part answered
# twice (a call abandoned by a lost lease whose answer came after the part was asked again) is the answer stored
# first, which is the one later parts were built on.
_PART_ANSWERS = sql(
    """
    SELECT part, reply FROM attempt
    WHERE request_id = :request_id AND part IS NOT NULL AND outcome = {O.SUCCESS} AND reply IS NOT NULL
    ORDER BY finished_at, number
    """
)


async def part_answers(conn: AsyncConnection, request_id: int) -> dict[str, str]:
    """The answer of each part of a split request answered so far, by part name (the first stored, if two were)."""
    answers: dict[str, str] = {}
    for row in await conn.execute(_PART_ANSWERS, {"request_id": request_id}):
        answers.setdefault(str(row.part), str(row.reply))
    return answers


async def last_invalid_reply(conn: AsyncConnection, request_id: int, number: int) -> tuple[str, str] | None:
    """The reply and the validation error of the request's latest `invalid_output` attempt before `number`."""
    params = {"request_id": request_id, "number": number}
    row = (await conn.execute(_LAST_INVALID, params)).one_or_none()
    return None if row is None else (str(row.reply), str(row.error_message or ""))


async def take_lease(
    conn: AsyncConnection,
    request_id: int,
    attempts: int,
    owner: str,
    lease_seconds: float,
    *,
    simulated: bool,
    upstream: str | None = None,
) -> Lease | None:
    """pending -> running, with an in-flight attempt row; None when the request is not due, finished or taken,
    its batch is not in_progress, or the batch is not for this kind of upstream (`simulated`). `upstream` (the
    base URL, no trailing slash) names the cached model list whose context lengths skip models; None: none."""
    row = (
        await conn.execute(
            _TAKE_LEASE,
            {
                "request_id": request_id,
                "attempts": attempts,
                "owner": owner,
                "lease_seconds": lease_seconds,
                "simulated": simulated,
                "upstream": upstream,
            },
        )
    ).one_or_none()
    if row is None:
        return None
    return Lease(
        request_id=row.id,
        batch_id=row.batch_id,
        attempt_id=row.attempt_id,
        number=row.attempts,
        failures=row.failures,
        chain_pos=row.chain_pos,
        chain=list(row.chain),
        models_sent=list(row.models_sent),
        max_attempts=row.max_attempts,
        free_only=row.free_only,
        fingerprint=row.fingerprint,
        body=row.body,
        models_skipped=list(row.models_skipped or ()),
        span=row.span,
        options=dict(row.options or {}),
        split_tokens=row.split_tokens,
        record=row.record,
        template=row.template,
    )


async def renew_lease(conn: AsyncConnection, request_id: int, owner: str, lease_seconds: float) -> bool:
    """Extend a running request's lease; False when `owner` no longer holds it."""
    params = {"request_id": request_id, "owner": owner, "lease_seconds": lease_seconds}
    return bool((await conn.execute(_RENEW, params)).rowcount)


async def record_answer(
    conn: AsyncConnection,
    lease: Lease,
    call: CallRecord,
    body: str,
    content: str | None,
    finish_reason: str | None,
) -> bool:
    """-> completed with its result, the call recorded and its cost spent; False if it was already answered."""
    params = call.params(lease.attempt_id)
    params.update(
        request_id=lease.request_id,
        batch_id=lease.batch_id,
        body=body,
        content=content,
        finish_reason=finish_reason,
        park_reason=None,
        resume_at=None,
    )
    return (await conn.execute(_COMPLETE, params)).one_or_none() is not None


async def record_part(conn: AsyncConnection, lease: Lease, owner: str, call: CallRecord) -> tuple[bool, bool]:
    """running -> pending (cancelled in a cancelling batch), due at once, a part's answer kept on its attempt;
    (recorded, moved): whether the call was recorded, and whether the request was given back by it."""
    params = call.params(lease.attempt_id)
    params.update(
        request_id=lease.request_id, batch_id=lease.batch_id, owner=owner, park_reason=None, resume_at=None
    )
    row = (await conn.execute(_PART, params)).one()
    return bool(row.recorded), bool(row.moved)


async def record_failure(
    conn: AsyncConnection,
    lease: Lease,
    owner: str,
    call: CallRecord,
    *,
    status: RequestStatus,
    failures: int,
    chain_pos: int,
    delay_seconds: float,
    park_reason: PauseReason | None,
    resume_at: datetime | None,
) -> FailRecord:
    """running -> `status` (pending, due after `delay_seconds`, or failed), the call recorded; with a park
    reason, or once its spend reaches the cap, the batch pauses."""
    params = call.params(lease.attempt_id)
    params.update(
        request_id=lease.request_id,
        batch_id=lease.batch_id,
        owner=owner,
        status=status.value,
        failures=failures,
        chain_pos=chain_pos,
        delay_seconds=delay_seconds,
        park_reason=park_reason.value if park_reason else None,
        resume_at=resume_at,
    )
    row = (await conn.execute(_FAIL, params)).one()
    return FailRecord(bool(row.moved), bool(row.recorded), row.paused)


async def abandon(conn: AsyncConnection, lease: Lease, owner: str, reason: str) -> None:
    """running -> pending (cancelled in a cancelling batch), the call in flight `abandoned`, no attempt spent."""
    params = CallRecord(Outcome.ABANDONED, error_message=reason).params(lease.attempt_id)
    params.update(request_id=lease.request_id, owner=owner)
    await conn.execute(_ABANDON, params)


async def give_back(
    conn: AsyncConnection,
    lease: Lease,
    owner: str,
    delay_seconds: float,
    park_reason: PauseReason | None = None,
    park_message: str | None = None,
) -> bool:
    """running -> pending, unsent, due after `delay_seconds` (cancelled in a cancelling batch); with a reason,
    the batch pauses until then. True when this call paused the batch."""
    params = {
        "attempt_id": lease.attempt_id,
        "request_id": lease.request_id,
        "owner": owner,
        "delay_seconds": delay_seconds,
        "park_reason": park_reason.value if park_reason else None,
        "park_message": park_message,
    }
    return bool((await conn.execute(_UNLEASE, params)).one().parked)


async def refuse(conn: AsyncConnection, lease: Lease, owner: str, message: str) -> None:
    """running -> failed without a call: its options forbid it."""
    params = {
        "attempt_id": lease.attempt_id,
        "request_id": lease.request_id,
        "owner": owner,
        "message": message,
    }
    await conn.execute(_REFUSE, params)


async def reuse(conn: AsyncConnection, lease: Lease, owner: str) -> bool:
    """running -> completed with an identical request's answer; False when there is none."""
    params = {
        "fingerprint": lease.fingerprint,
        "request_id": lease.request_id,
        "attempt_id": lease.attempt_id,
        "owner": owner,
    }
    return (await conn.execute(_REUSE, params)).one_or_none() is not None


# --- the batch lane (a remote batch's driver) -----------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class LineCall:
    """One line of a remote batch as its attempt records it: the request, the remote batch, the model sent."""

    request_id: int
    batch_id: str
    remote_batch_id: int
    model_sent: str
    owner: str
    call: CallRecord

    def params(self) -> dict[str, Any]:
        """The bind parameters the line statements share."""
        params = self.call.params(0)
        del params["attempt_id"]
        params.update(
            request_id=self.request_id,
            batch_id=self.batch_id,
            remote_batch_id=self.remote_batch_id,
            models_sent=[self.model_sent],
            owner=self.owner,
            park_reason=None,
            resume_at=None,
        )
        return params


async def record_line_answer(
    conn: AsyncConnection, line: LineCall, body: str, content: str | None, finish_reason: str | None
) -> bool:
    """remote -> completed with its result, the line recorded as an attempt; False when the request is no longer
    waiting in that remote batch (its line was stored already)."""
    params = line.params()
    params.update(body=body, content=content, finish_reason=finish_reason)
    return (await conn.execute(_LINE_ANSWER, params)).one_or_none() is not None


async def record_line_failure(
    conn: AsyncConnection,
    line: LineCall,
    *,
    status: RequestStatus,
    failures: int,
    chain_pos: int,
    delay_seconds: float,
) -> str | None:
    """remote -> `status` (pending: live, due after `delay_seconds`; failed), the failed line recorded as an
    attempt (cancelled when its batch stopped); the status it took, None when it was not waiting there."""
    params = line.params()
    params.update(status=status.value, failures=failures, chain_pos=chain_pos, delay_seconds=delay_seconds)
    moved = (await conn.execute(_LINE_FAILURE, params)).scalar_one_or_none()
    return None if moved is None else str(moved)


async def release_remote(conn: AsyncConnection, remote_batch_id: int, reason: str | None) -> int:
    """remote -> pending (live, unspent) for the requests a remote batch left without a line, or cancelled in a
    stopped batch; how many."""
    params = {"remote_batch_id": remote_batch_id, "reason": reason}
    return len((await conn.execute(_RELEASE_REMOTE, params)).all())


async def lane_off(conn: AsyncConnection, batch_id: str, note: str) -> tuple[bool, int]:
    """The Batch API is not enabled for the key: the batch's requests in the lane that no created remote batch
    holds go live. (Whether this call set the batch's note, so the caller says it once; how many went live.)"""
    row = (await conn.execute(_LANE_OFF, {"batch_id": batch_id, "note": note})).one()
    return bool(row.noted), int(row.released)


# --- the feeder -----------------------------------------------------------------------------------------------


async def expire_leases(conn: AsyncConnection) -> int:
    """Expired leases: running -> pending (or cancelled), their calls abandoned; how many calls."""
    return len((await conn.execute(_EXPIRE_LEASES)).all())


async def resume_due_batches(conn: AsyncConnection) -> int:
    """paused -> in_progress for the batches whose resume_at passed; how many."""
    return int((await conn.execute(_RESUME_DUE_BATCHES)).scalar_one())


async def finalize_batches(conn: AsyncConnection) -> list[str]:
    """in_progress -> completed, cancelling -> cancelled, once nothing is pending or running; their ids."""
    return [str(r.id) for r in await conn.execute(_FINALIZE)]


async def expire_batches(conn: AsyncConnection) -> int:
    """Batches past their completion window -> expired; how many."""
    return len((await conn.execute(_EXPIRE_BATCHES)).all())


async def cancel_expired_requests(conn: AsyncConnection) -> None:
    """pending -> cancelled (`batch_expired`) in the batches that expired lately."""
    await conn.execute(_CANCEL_EXPIRED_REQUESTS, {"sweep": EXPIRY_SWEEP_SECONDS})


# --- a user ---------------------------------------------------------------------------------------------------


async def start_batch(conn: AsyncConnection, batch_id: str, total: int, invalid: int) -> None:
    """validating -> in_progress, once its `total` requests are stored."""
    await conn.execute(_START_BATCH, {"batch_id": batch_id, "total": total, "invalid": invalid})


async def resume_paused(conn: AsyncConnection, batch_id: str, max_cost: Decimal | None) -> bool:
    """paused -> in_progress (with a new cap, if given), its pending requests due now; False if not paused."""
    return bool(
        (await conn.execute(_RESUME_PAUSED, {"batch_id": batch_id, "max_cost": max_cost})).scalar_one()
    )


async def hold_for_run(conn: AsyncConnection, batch_id: str, message: str) -> bool:
    """in_progress (or paused for the quota) -> paused `interrupted`; True when it moved."""
    return bool((await conn.execute(_HOLD_FOR_RUN, {"batch_id": batch_id, "message": message})).rowcount)


async def cancel(conn: AsyncConnection, batch_id: str) -> Cancelled:
    """-> cancelling, its pending requests cancelled; cancelled at once when no call is running."""
    row = (await conn.execute(_CANCEL, {"batch_id": batch_id})).one()
    await conn.execute(_CANCELLED_IF_IDLE, {"batch_id": batch_id})
    return Cancelled(int(row.batches), int(row.requests))


async def retry_failed(conn: AsyncConnection, batch_id: str) -> int:
    """failed requests -> pending with fresh attempts; a completed batch -> in_progress; how many requests."""
    return int((await conn.execute(_RETRY_FAILED, {"batch_id": batch_id})).scalar_one())


async def delete(conn: AsyncConnection, batch_id: str) -> int | None:
    """Delete an ended (or paused) batch no call runs for, with every row of it; its total, None if it stays."""
    row = (await conn.execute(_DELETE, {"batch_id": batch_id})).one_or_none()
    return None if row is None else int(row.total)
