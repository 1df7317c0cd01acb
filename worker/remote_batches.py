"""The batch lane's driver: remote batches of OpenRouter's Batch API made from a batch's requests, sent, polled, their
lines stored as attempts and results exactly like calls, and what they leave given back to the live lane.

Every worker runs one (beside its feeder). A `remote_batch` row and its requests' membership are written before
its create is sent; the remote id is stored as soon as the create is answered; one worker at a time drives a row,
under a lease in Postgres. Nothing is paid twice:

- a request in the batch lane is `remote`, a status no lease takes, from its submit until its line is stored
  or its remote batch ends (or is proved never created) without one;
- its requests are given back to the live lane only once the remote batch is over on OpenRouter's side and
  every page of its lines was stored, so a line answered there is never also called live;
- a create whose answer was lost (a crash between sending it and storing the id, a cut connection) is found again
  by listing the key's batches (newest first, created after it was sent, the same model, endpoint and count, no
  other row's), and sent again only when none is found long after its deadline. At most one create per model,
  endpoint and upstream is unanswered at a time (a unique index), so the one found cannot be another of ours.

A line's body is sent as a live call's would be: a schema request with `provider.require_parameters` and, with
the batch's `heal`, the healing plugin (`jobs.formats.structured.routed_for_schema`), added as the create is
built. A request whose first model cannot hold it never reaches this lane: submit makes it live.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.core.constants import CHAT_ENDPOINT, EMBEDDINGS_ENDPOINT
from jobs.core.logs import get_logger, redact
from jobs.core.sql import sql
from jobs.core.states import BatchStatus, Outcome, RemoteState, RequestStatus
from jobs.formats.structured import routed_for_schema
from jobs.scheduling import lifecycle
from jobs.scheduling.lifecycle import LineCall
from jobs.submission.lanes import BATCH_SUFFIX, base_model, batch_slug
from worker.batch_api import BatchApiClient, BatchApiError, BatchApiUnreachable, BatchBody, RemoteBatchInfo
from worker.classify import Failure, Success, Usage, classify, usage_of
from worker.context import WorkerContext
from worker.openrouter import CallResult
from worker.records import call_record, persist, storable
from worker.replycheck import checked_answer
from worker.retry import decide

__all__ = ["DriveReport", "RemoteDriver", "drive_forever"]

log = get_logger(__name__)

# A page of lines holds this many answers in memory at once (an answer may be megabytes).
RESULTS_PAGE_LINES = 100
# Remote batches one tick forms for one batch: up to 100,000 requests at the largest size.
FORM_PER_TICK = 20
# Remote batches one worker drives per tick; the others are due for the next tick, or another worker's.
DRIVE_PER_TICK = 8
# A lost create is looked for among the batches created from this long before it was sent: the two clocks
# (ours, OpenRouter's) may differ by that much.
CLOCK_SKEW_SECONDS = 300
# Pages of 100 of the key's batches looked through for a lost create before it is taken for not found.
LIST_PAGES_MAX = 20
# Reads in a row that find a remote batch gone (404, 410) make it over: one could be a glitch.
GONE_AFTER_MISSES = 3
# A create refused for a reason that a later one may not meet (401, 402, 429, …) is sent again after this.
RESEND_AFTER_REFUSAL_SECONDS = 60.0
# A line's envelope around its body, `{"custom_id":"r<id>","body":…},`, counted towards the size limit.
LINE_OVERHEAD_BYTES = 64
# What a schema request's line gains as it is sent (`routed_for_schema`: `"provider":{"require_parameters":true}`
# and the healing plugin), counted likewise: JSONB's text of the stored body does not hold them.
ROUTING_OVERHEAD_BYTES = 96
# The head and tail of a create's body beyond its `endpoint`, `model` and `callback_url` values, counted likewise.
BODY_OVERHEAD_BYTES = 128
# A lost create is sent again no sooner than this after its own deadline (ORBATCH_REQUEST_TIMEOUT), whatever
# ORBATCH_REMOTE_LOST_CREATE_SECONDS says: a create still in flight is never taken for lost. (The setting's
# default, 900 s, is the real wait: it also covers OpenRouter taking a create whose connection was cut.)
LOST_CREATE_MARGIN_SECONDS = 3.0
# A simulator's remote batches are polled at least this often: they end in seconds.
SIMULATOR_POLL_SECONDS = 1.0
# A worker stopping lets a create in flight be answered (and its id stored) for up to this long.
STOP_WAIT_SECONDS = 30.0

# The endpoint a request runs, for grouping into remote batches (one endpoint per batch): as the worker tells it
# (`jobs.formats.input_lines.endpoint_of`), an embeddings request is a body with `input` and no `messages`.
_REQUEST_ENDPOINT = (
    f"CASE WHEN r.body ? 'input' AND NOT r.body ? 'messages' THEN CAST('{EMBEDDINGS_ENDPOINT}' AS text)"
    f" ELSE CAST('{CHAT_ENDPOINT}' AS text) END"
)

# A custom_id sent for a request: its id, so a line maps back to it whatever the user's custom_id.
_CUSTOM_ID = re.compile(r"r([0-9]{1,19})")

# A batch that stopped takes no new remote batch, and what its remote batches leave is cancelled.
_STOPPED = frozenset({BatchStatus.CANCELLING, BatchStatus.CANCELLED, BatchStatus.EXPIRED})


@dataclass(slots=True)
class DriveReport:
    """What one tick of the driver did."""

    formed: int = 0
    driven: int = 0


@dataclass(slots=True)
class _Row:
    """A remote batch this worker drives now (its row, leased), with its batch's standing."""

    id: int
    batch_id: str
    model: str
    endpoint: str
    state: RemoteState
    remote_id: str | None
    remote_status: str | None
    total: int
    sent_at: datetime | None
    cursor: str | None
    cancel_sent_at: datetime | None
    cancel_refused: bool
    misses: int
    batch_status: str
    lane_note: str | None

    @classmethod
    def of(cls, row: Any) -> _Row:
        return cls(
            id=int(row.id),
            batch_id=str(row.batch_id),
            model=str(row.model),
            endpoint=str(row.endpoint),
            state=RemoteState(row.state),
            remote_id=row.remote_id,
            remote_status=row.remote_status,
            total=int(row.total),
            sent_at=row.sent_at,
            cursor=row.cursor,
            cancel_sent_at=row.cancel_sent_at,
            cancel_refused=bool(row.cancel_refused),
            misses=int(row.misses),
            batch_status=str(row.batch_status),
            lane_note=row.lane_note,
        )

    @property
    def stopped(self) -> bool:
        return self.batch_status in _STOPPED

    def describe(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "remote_batch": self.id, "remote_id": self.remote_id}


# The running batches of this kind of upstream with requests waiting for a remote batch.
_FORMABLE = sql(
    """
    SELECT b.id, b.lane_note FROM batch b
    WHERE b.status = {B.IN_PROGRESS} AND b.simulated = :simulated
      AND (CAST(:batch_id AS text) IS NULL OR b.id = :batch_id)
      AND EXISTS (
          SELECT 1 FROM request r WHERE r.batch_id = b.id AND r.status = {R.REMOTE} AND r.remote_batch_id IS NULL
      )
    ORDER BY b.created_at LIMIT 50
    """
)

# The first waiting request's first model and endpoint: the next remote batch is of those.
_NEXT_GROUP = sql(
    f"""
    SELECT (coalesce(r.models, b.models))[1] AS model, {_REQUEST_ENDPOINT} AS endpoint
    FROM request r JOIN batch b ON b.id = r.batch_id
    WHERE r.batch_id = :batch_id AND r.status = {{R.REMOTE}} AND r.remote_batch_id IS NULL
    ORDER BY r.id LIMIT 1
    """  # noqa: S608 - built from this module's constants; values are bound parameters
)

# One remote batch formed: its row and its members, in line order, up to the count and size limits (at least
# one request, so a line larger than a configured limit still goes). Requests another former holds are skipped.
_FORM = sql(
    f"""
    WITH candidates AS (
        SELECT r.id, octet_length(CAST(r.body AS text)) + :line_overhead
                     + CASE WHEN r.body ? 'response_format' THEN :routing_overhead ELSE 0 END AS size
        FROM request r JOIN batch b ON b.id = r.batch_id
        WHERE r.batch_id = :batch_id AND r.status = {{R.REMOTE}} AND r.remote_batch_id IS NULL
          AND (coalesce(r.models, b.models))[1] = :first_model AND {_REQUEST_ENDPOINT} = :endpoint
        ORDER BY r.id LIMIT :max_requests
        FOR UPDATE OF r SKIP LOCKED
    ), sized AS (
        SELECT id, size, sum(size) OVER (ORDER BY id) AS running, row_number() OVER (ORDER BY id) AS n
        FROM candidates
    ), chosen AS (
        SELECT id, size FROM sized WHERE running <= :max_bytes OR n = 1
    ), made AS (
        INSERT INTO remote_batch (batch_id, simulated, model, endpoint, total, bytes)
        SELECT :batch_id, :simulated, :model, :endpoint, count(*), sum(size) FROM chosen HAVING count(*) > 0
        RETURNING id, total
    ), joined AS (
        UPDATE request r SET remote_batch_id = made.id FROM made, chosen WHERE r.id = chosen.id RETURNING r.id
    )
    SELECT made.id, made.total, (SELECT count(*) FROM joined) AS joined FROM made
    """  # noqa: S608 - built from this module's constants; values are bound parameters
)

# Rows due now that no live worker drives, leased to this one.
_CLAIM = sql(
    """
    WITH due AS (
        SELECT rb.id FROM remote_batch rb
        WHERE rb.state NOT IN ({S.DONE}, {S.REFUSED}) AND rb.next_at <= now() AND rb.simulated = :simulated
          AND (rb.lease_owner IS NULL OR rb.lease_expires_at < now() OR rb.lease_owner = :owner)
          AND (CAST(:batch_id AS text) IS NULL OR rb.batch_id = :batch_id)
        ORDER BY rb.next_at, rb.id LIMIT :most
        FOR UPDATE OF rb SKIP LOCKED
    )
    UPDATE remote_batch rb SET lease_owner = :owner, lease_expires_at = now() + make_interval(secs => :lease)
    FROM due, batch b WHERE rb.id = due.id AND b.id = rb.batch_id
    RETURNING rb.id, rb.batch_id, rb.model, rb.endpoint, rb.state, rb.remote_id, rb.remote_status, rb.total,
              rb.sent_at, rb.cursor, rb.cancel_sent_at, rb.cancel_refused, rb.misses, b.status AS batch_status,
              b.lane_note
    """
)

# About to send its create: sent (for all anyone knows) from now on. Only while this worker holds it, and its
# batch still runs with the lane on (a cancel or the lane turned off meanwhile sends nothing).
_MARK_SENDING = sql(
    """
    UPDATE remote_batch rb SET state = {S.SENDING}, sent_at = now(), total = :total
    WHERE rb.id = :id AND rb.lease_owner = :owner AND rb.state = {S.READY}
      AND EXISTS (
          SELECT 1 FROM batch b WHERE b.id = rb.batch_id AND b.status = {B.IN_PROGRESS} AND b.lane_note IS NULL
      )
    RETURNING rb.id
    """
)

# Whether another create of the same model, endpoint and upstream awaits its answer (one at a time: see above).
_SENDING_NOW = sql(
    """
    SELECT EXISTS (
        SELECT 1 FROM remote_batch o JOIN remote_batch rb ON rb.id = :id
        WHERE o.state = {S.SENDING} AND o.model = rb.model AND o.endpoint = rb.endpoint
          AND o.simulated = rb.simulated AND o.id <> rb.id
    )
    """
)

# A remote batch's requests still waiting for their lines, in id order, a chunk at a time.
_MEMBERS = sql(
    """
    SELECT id, body FROM request
    WHERE remote_batch_id = :remote_batch_id AND status = {R.REMOTE} AND id > :after
    ORDER BY id LIMIT :most
    """
)

# What the retry policy needs of the requests a page of lines names (those still waiting in this batch).
_WAITING = sql(
    """
    SELECT r.id, r.failures, r.chain_pos, coalesce(r.models, b.models) AS chain, b.max_attempts, r.body
    FROM request r JOIN batch b ON b.id = r.batch_id
    WHERE r.id = ANY(CAST(:ids AS bigint[])) AND r.remote_batch_id = :remote_batch_id AND r.status = {R.REMOTE}
    """
)

# Which of these remote ids some row of ours already has (a lost create is none of them).
_KNOWN_IDS = text("SELECT remote_id FROM remote_batch WHERE remote_id = ANY(CAST(:ids AS text[]))")

# Rows this worker leases, let go when it stops cleanly: the next worker need not wait for them to lapse.
_LET_GO = text(
    "UPDATE remote_batch SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner = :owner"
)

# The columns a driver sets on its row; each write is fenced by its lease.
_COLUMNS = frozenset(
    {
        "state",
        "remote_id",
        "remote_status",
        "total",
        "completed",
        "failed",
        "cost",
        "provider",
        "sent_at",
        "submitted_at",
        "expires_at",
        "ended_at",
        "finished_at",
        "next_at",
        "cursor",
        "cancel_sent_at",
        "cancel_refused",
        "misses",
        "error",
        "lease_expires_at",
    }
)


def _now() -> datetime:
    return datetime.now(UTC)


def _epoch(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _line_request(line: dict[str, Any]) -> int | None:
    custom_id = line.get("custom_id")
    match = _CUSTOM_ID.fullmatch(custom_id) if isinstance(custom_id, str) else None
    return int(match.group(1)) if match else None


def _embedding(status: int, raw: bytes, body: dict[str, Any]) -> Success | Failure:
    """An embeddings line: an answer when it holds its vectors."""
    model = body.get("model") if isinstance(body.get("model"), str) else None
    usage = usage_of(body)
    if isinstance(body.get("data"), list):
        return Success(status, raw, model, None, None, None, None, usage)
    return Failure(Outcome.RETRY, "no_embeddings", "an embeddings answer with no `data`", status, usage=usage)


def line_outcome(endpoint: str, line: dict[str, Any]) -> Success | Failure:
    """One line of a remote batch as the class of a call's answer: its `response` (a 2xx with the endpoint's
    answer) or its `error`. A failure of any kind is one to retry live (see `_as_retry`)."""
    response = line.get("response")
    error = line.get("error")
    if isinstance(response, dict):
        status = response.get("status_code")
        body = response.get("body")
        if isinstance(status, int) and isinstance(body, dict):
            raw = orjson.dumps(body)
            if endpoint == EMBEDDINGS_ENDPOINT and status < 300:
                return _embedding(status, raw, body)
            # A non-2xx line is classed as that HTTP answer would be; a 2xx chat answer as a call's.
            return classify(CallResult(latency_ms=0, status=status, raw=raw))
    if isinstance(error, dict):
        code = error.get("code") or error.get("type") or "batch_line_error"
        message = error.get("message")
        return Failure(
            Outcome.RETRY,
            str(code),
            redact(message if isinstance(message, str) and message else "the remote batch failed this line"),
        )
    return Failure(
        Outcome.RETRY, "batch_line_malformed", "a line of the remote batch with no response or error"
    )


def _as_retry(failure: Failure) -> Failure:
    """A failed line goes live as a failed call does, spending an attempt: never `fail now` (a remote batch has
    limits of its own, such as media or one response format per Google batch, that a live call may not) and
    never a park or a fleet-wide wait (it says nothing of the live lane's account or rate)."""
    failure.outcome = Outcome.RETRY
    failure.spends_attempt = True
    failure.retry_after = None
    failure.park_reason = None
    failure.resume_at = None
    failure.cooldown_until = None
    return failure


class _Moved(Exception):
    """The row is no longer as this worker left it (another worker drives it, or the batch lane was turned off
    for its batch meanwhile): this worker stops touching it."""


class RemoteDriver:
    """Forms, sends, polls and collects the remote batches of one kind of upstream (of one batch, for a run)."""

    def __init__(
        self,
        ctx: WorkerContext,
        api: BatchApiClient,
        only_batch: str | None = None,
        check: Callable[[dict[str, Any], Success], Awaitable[Success | Failure]] | None = None,
    ) -> None:
        self.ctx = ctx
        self.api = api
        self.only_batch = only_batch
        self.settings = ctx.settings
        # The worker's engine runs each statement on its own; forming and a release with its row are one
        # transaction each, on the same pool.
        self.engine: AsyncEngine = ctx.engine
        self.tx: AsyncEngine = ctx.engine.execution_options(isolation_level="READ COMMITTED")
        self.check = check
        # A create still in flight is never taken for lost: its deadline and a margin pass first.
        self.lost_create_seconds = max(
            self.settings.remote_lost_create_seconds,
            self.settings.request_timeout + LOST_CREATE_MARGIN_SECONDS,
        )

    # --- forming --------------------------------------------------------------------------------------------

    async def form(self) -> int:
        """Put the waiting requests of running batches into new remote batches; how many were made."""
        made = 0
        async with self.engine.connect() as conn:
            batches = (
                await conn.execute(_FORMABLE, {"simulated": self.ctx.simulated, "batch_id": self.only_batch})
            ).all()
        for batch in batches:
            if batch.lane_note is not None:
                # The lane is off for this batch: anything still waiting for it goes live.
                async with self.tx.begin() as conn:
                    await lifecycle.lane_off(conn, batch.id, batch.lane_note)
                continue
            for _ in range(FORM_PER_TICK):
                if not await self._form_one(batch.id):
                    break
                made += 1
        return made

    async def _slug(self, model: str) -> str:
        variant = base_model(model) + BATCH_SUFFIX
        listed = self.settings.batch_slug == "variant" and await self.ctx.prices.listed(variant)
        return batch_slug(model, listed, self.settings.batch_slug)

    def _head_bytes(self, model: str, endpoint: str) -> int:
        """What a create's body holds besides its lines."""
        callback = self.settings.remote_callback_url or ""
        return BODY_OVERHEAD_BYTES + len(model.encode()) + len(endpoint.encode()) + len(callback.encode())

    async def _form_one(self, batch_id: str) -> bool:
        async with self.engine.connect() as conn:
            group = (await conn.execute(_NEXT_GROUP, {"batch_id": batch_id})).one_or_none()
        if group is None or group.model is None:
            return False
        slug = await self._slug(str(group.model))
        async with self.tx.begin() as conn:
            # One former per batch at a time: two would each take a share and count their own.
            locked = await conn.execute(
                text("SELECT pg_try_advisory_xact_lock(hashtext('orbatch:form:' || :batch_id))"),
                {"batch_id": batch_id},
            )
            if not locked.scalar_one():
                return False
            row = (
                await conn.execute(
                    _FORM,
                    {
                        "batch_id": batch_id,
                        "first_model": group.model,
                        "endpoint": group.endpoint,
                        "model": slug,
                        "simulated": self.ctx.simulated,
                        "max_requests": self.settings.remote_max_requests,
                        "max_bytes": self.settings.remote_max_bytes
                        - self._head_bytes(slug, str(group.endpoint)),
                        "line_overhead": LINE_OVERHEAD_BYTES,
                        "routing_overhead": ROUTING_OVERHEAD_BYTES,
                    },
                )
            ).one_or_none()
        if row is None:
            return False
        log.info(
            "remote batch formed",
            batch_id=batch_id,
            remote_batch=int(row.id),
            model=slug,
            endpoint=group.endpoint,
            requests=int(row.joined),
        )
        return True

    # --- driving --------------------------------------------------------------------------------------------

    async def tick(self) -> DriveReport:
        """Form what waits, then drive the remote batches due now that no other worker drives."""
        report = DriveReport(formed=await self.form())
        async with self.engine.connect() as conn:
            rows = [
                _Row.of(r)
                for r in await conn.execute(
                    _CLAIM,
                    {
                        "simulated": self.ctx.simulated,
                        "owner": self.ctx.owner,
                        "batch_id": self.only_batch,
                        "most": DRIVE_PER_TICK,
                        "lease": self.settings.remote_lease_seconds,
                    },
                )
            ]
        for row in rows:
            try:
                await self._drive(row)
            except _Moved:
                log.info("remote batch moved on elsewhere; left to it", **row.describe())
            report.driven += 1
        return report

    async def let_go(self) -> None:
        """Give up every lease this worker holds (it stops): the next worker drives them at once."""
        async with self.engine.connect() as conn:
            await conn.execute(_LET_GO, {"owner": self.ctx.owner})

    async def _drive(self, row: _Row) -> None:
        if row.state is RemoteState.READY:
            await self._send(row)
        elif row.state is RemoteState.SENDING:
            await self._recover(row)
        elif row.state is RemoteState.RUNNING:
            await self._poll(row)
        elif row.state is RemoteState.COLLECTING:
            await self._collect(row)

    async def _set(
        self,
        row: _Row,
        conn: Any = None,
        *,
        where_state: RemoteState | None = None,
        leased: bool = True,
        **values: Any,
    ) -> None:
        """Write the row's columns, only while this worker holds its lease (unless not `leased`) and it is in
        `where_state`; _Moved otherwise."""
        unknown = set(values) - _COLUMNS
        if unknown:
            raise ValueError(f"not a remote_batch column a driver sets: {sorted(unknown)}")
        sets = ", ".join(f"{name} = :{name}" for name in values)
        statement = text(
            f"UPDATE remote_batch SET {sets} WHERE id = :id"  # noqa: S608 - columns from _COLUMNS; values bound
            + (" AND lease_owner = :owner" if leased else "")
            + (" AND state = :where_state" if where_state is not None else "")
            + " RETURNING id"
        )
        params = {
            **{k: v.value if isinstance(v, RemoteState) else v for k, v in values.items()},
            "id": row.id,
            "owner": self.ctx.owner,
        }
        if where_state is not None:
            params["where_state"] = where_state.value

        async def write(connection: Any) -> bool:
            return (await connection.execute(statement, params)).one_or_none() is not None

        if conn is not None:
            done = await write(conn)
        else:

            async def once() -> bool:
                async with self.engine.connect() as connection:
                    return await write(connection)

            done = await persist("remote batch", once)
        if not done:
            raise _Moved
        if "state" in values:
            row.state = RemoteState(values["state"])

    async def _mark_sending(self, row: _Row, lines: int) -> bool:
        """ready -> sending, while this worker holds it and its batch still runs in the lane; False if not."""

        async def once() -> bool:
            async with self.engine.connect() as conn:
                params = {"id": row.id, "owner": self.ctx.owner, "total": lines}
                return (await conn.execute(_MARK_SENDING, params)).one_or_none() is not None

        if not await persist("remote batch", once):
            return False
        row.state = RemoteState.SENDING
        return True

    @property
    def poll_seconds(self) -> float:
        """How long until a remote batch is looked at again: ORBATCH_REMOTE_POLL_SECONDS, or at most a second in
        front of a simulator, whose batches end in seconds (a trial run would otherwise wait on its polls)."""
        poll = self.settings.remote_poll_seconds
        return min(poll, SIMULATOR_POLL_SECONDS) if self.ctx.simulated else poll

    def _later(self, seconds: float | None = None) -> datetime:
        return _now() + timedelta(seconds=seconds if seconds is not None else self.poll_seconds)

    async def _finish(
        self, row: _Row, state: RemoteState, reason: str | None, error: str | None = None
    ) -> int:
        """The remote batch is over (or never was): its requests still waiting go live (cancelled in a stopped
        batch) in the same transaction that marks it `state`; how many went."""
        values: dict[str, Any] = {
            "state": state,
            "finished_at": _now(),
            "cursor": None,
            "lease_expires_at": _now(),
        }
        if error is not None:
            values["error"] = error
        async with self.tx.begin() as conn:
            await self._set(row, conn, where_state=row.state, **values)
            released = await lifecycle.release_remote(conn, row.id, reason)
        if released:
            log.info(
                "remote batch left requests unanswered: they run live", released=released, **row.describe()
            )
        return released

    # READY: send the create.

    async def _lines(self, row: _Row) -> AsyncIterator[list[tuple[str, dict[str, Any]]]]:
        """The lines of its create, as the live lane sends each body: a schema request routed to providers
        that honour it (`provider.require_parameters`, unless the line names it) and, with the batch's `heal`,
        OpenRouter's healing plugin. (A correction turn belongs to a retry, which runs live.)"""
        async with self.engine.connect() as conn:
            options = (
                await conn.execute(text("SELECT options FROM batch WHERE id = :id"), {"id": row.batch_id})
            ).scalar_one_or_none()
        heal = bool((options or {}).get("heal", False))
        after = 0
        while True:
            async with self.engine.connect() as conn:
                rows = (
                    await conn.execute(_MEMBERS, {"remote_batch_id": row.id, "after": after, "most": 1000})
                ).all()
            if not rows:
                return
            after = int(rows[-1].id)
            yield [(f"r{int(r.id)}", routed_for_schema(r.body, heal)) for r in rows]

    async def _send(self, row: _Row) -> None:
        if row.stopped:
            await self._finish(row, RemoteState.DONE, "its batch stopped before its remote batch was sent")
            return
        if row.lane_note is not None:
            await self._lane_off(row, row.lane_note)
            return
        if row.batch_status != BatchStatus.IN_PROGRESS:
            # Paused (a budget, an interrupted run): sent once it runs again.
            await self._set(row, next_at=self._later())
            return
        async with self.engine.connect() as conn:
            busy = (await conn.execute(_SENDING_NOW, {"id": row.id})).scalar_one()
        if busy:
            # Another create of this model and endpoint awaits its answer: this one goes after it (the body is
            # not built until then).
            await self._set(row, next_at=self._later(min(1.0, self.poll_seconds)))
            return
        body = await BatchBody.build(
            row.endpoint, row.model, self._lines(row), self.settings.remote_callback_url
        )
        try:
            if body.lines == 0:
                await self._finish(row, RemoteState.DONE, None, "no request left to send")
                return
            try:
                # Recorded as sent before it is: a crash from here on is recovered by looking for it.
                if not await self._mark_sending(row, body.lines):
                    return  # its batch stopped or lost the lane meanwhile: the next look says what to do
            except IntegrityError:
                # Another create of this model and endpoint awaits its answer: this one goes after it.
                await self._set(row, next_at=self._later())
                return
            log.info(
                "remote batch sending",
                model=row.model,
                requests=body.lines,
                bytes=body.size,
                **row.describe(),
            )
            try:
                info = await self.api.create(body)
            except BatchApiUnreachable as exc:
                await self._unanswered(row, str(exc))
                return
            except BatchApiError as exc:
                await self._create_refused(row, exc)
                return
        finally:
            body.close()
        # Stored at once, even if a slow upload outlived this worker's lease: the id in hand is the truth, and
        # the state fence keeps a row another worker recovered meanwhile as that one left it.
        await self._set(
            row,
            where_state=RemoteState.SENDING,
            leased=False,
            state=RemoteState.RUNNING,
            remote_id=info.id,
            remote_status=info.status,
            submitted_at=_now(),
            expires_at=_epoch(info.expires_at),
            next_at=self._later(),
            error=None,
        )
        log.info("remote batch created", status=info.status, **{**row.describe(), "remote_id": info.id})

    async def _unanswered(self, row: _Row, error: str) -> None:
        """The create may or may not have taken effect: the row stays `sending` and is looked for later."""
        log.warning(
            "remote batch create unanswered; it will be looked for before any resend",
            error=error,
            **row.describe(),
        )
        await self._set(row, error=error, next_at=self._later())

    async def _create_refused(self, row: _Row, exc: BatchApiError) -> None:
        if exc.status in (403, 404):
            note = (
                f"OpenRouter's Batch API is not enabled for this key (HTTP {exc.status} to a create: {exc.message}); "
                "the batch runs live, at the live price"
            )
            await self._lane_off(row, note)
        elif exc.status in (400, 413, 422):
            # Never created: the requests run live rather than be sent again as they are.
            error = f"create refused (HTTP {exc.status}, {exc.code}): {exc.message}"
            log.warning(
                "OpenRouter refused a remote batch; its requests run live", error=error, **row.describe()
            )
            await self._finish(row, RemoteState.REFUSED, f"remote batch refused: {exc.message}"[:2000], error)
        elif exc.status >= 500:
            # A gateway's 5xx may come after OpenRouter took the batch.
            await self._unanswered(row, f"HTTP {exc.status} ({exc.code}): {exc.message}")
        else:
            # 401, 402, 429…: not created; sent again later.
            log.warning(
                "remote batch create refused; sent again later",
                status=exc.status,
                error=exc.message,
                **row.describe(),
            )
            await self._set(
                row,
                where_state=RemoteState.SENDING,
                state=RemoteState.READY,
                sent_at=None,
                error=f"HTTP {exc.status} ({exc.code}): {exc.message}",
                next_at=self._later(max(RESEND_AFTER_REFUSAL_SECONDS, self.poll_seconds)),
            )

    async def _lane_off(self, row: _Row, note: str) -> None:
        """The Batch API is not enabled for the key: this batch runs live, said once."""
        async with self.tx.begin() as conn:
            await self._set(
                row, conn, where_state=row.state, state=RemoteState.REFUSED, finished_at=_now(), error=note
            )
            await conn.execute(
                sql(
                    "UPDATE remote_batch SET state = {S.REFUSED}, finished_at = now(), error = :note"
                    " WHERE batch_id = :batch_id AND state = {S.READY}"
                ),
                {"batch_id": row.batch_id, "note": note},
            )
            noted, released = await lifecycle.lane_off(conn, row.batch_id, note)
        if noted:
            log.warning(
                "batch lane off: the batch runs live", batch_id=row.batch_id, reason=note, requests=released
            )

    # SENDING: a create whose answer was lost.

    async def _recover(self, row: _Row) -> None:
        sent_at = row.sent_at or _now()
        try:
            found = await self._find(row, sent_at)
        except BatchApiUnreachable as exc:
            await self._set(row, error=str(exc), next_at=self._later())
            return
        except BatchApiError as exc:
            # Listing refused (404 with the lane off, say): nothing can be found; the wait below decides.
            log.warning(
                "listing remote batches failed", status=exc.status, error=exc.message, **row.describe()
            )
            found = None
        if found is not None:
            try:
                await self._set(
                    row,
                    where_state=RemoteState.SENDING,
                    state=RemoteState.RUNNING,
                    remote_id=found.id,
                    remote_status=found.status,
                    submitted_at=_now(),
                    expires_at=_epoch(found.expires_at),
                    next_at=_now(),
                    error=None,
                )
            except IntegrityError:
                # Another row took that id meanwhile: look again next time.
                await self._set(row, next_at=self._later())
                return
            log.warning("lost remote batch create found again", **{**row.describe(), "remote_id": found.id})
            return
        waited = (_now() - sent_at).total_seconds()
        if waited < self.lost_create_seconds:
            await self._set(row, next_at=self._later())
            return
        # Long past its deadline and on no list: it never took effect. Sent again from `ready`.
        log.warning(
            "lost remote batch create not found on OpenRouter; sending it again",
            waited_seconds=round(waited),
            **row.describe(),
        )
        await self._set(
            row, where_state=RemoteState.SENDING, state=RemoteState.READY, sent_at=None, next_at=_now()
        )

    async def _find(self, row: _Row, sent_at: datetime) -> RemoteBatchInfo | None:
        """The key's batch this row's lost create made: created after it was sent (less the clocks' skew), of its
        model, endpoint and count, and no other row's; the oldest such if several."""
        cutoff = sent_at.timestamp() - CLOCK_SKEW_SECONDS
        names = {row.model, base_model(row.model), base_model(row.model) + BATCH_SUFFIX}
        candidates: list[RemoteBatchInfo] = []
        after: str | None = None
        for _ in range(LIST_PAGES_MAX):
            page = await self.api.list(after=after)
            older = False
            for info in page.batches:
                if info.created_at is not None and info.created_at < cutoff:
                    older = True
                    break
                if (
                    (info.model is None or info.model in names)
                    and (info.endpoint is None or info.endpoint == row.endpoint)
                    and info.total == row.total
                ):
                    candidates.append(info)
            if older or not page.has_more or page.last_id is None:
                break
            after = page.last_id
        if not candidates:
            return None
        async with self.engine.connect() as conn:
            known = set((await conn.execute(_KNOWN_IDS, {"ids": [c.id for c in candidates]})).scalars())
        free = [c for c in candidates if c.id not in known]
        return min(free, key=lambda c: c.created_at or 0) if free else None

    # RUNNING: poll it.

    async def _poll(self, row: _Row) -> None:
        assert row.remote_id is not None
        try:
            info = await self.api.get(row.remote_id)
        except BatchApiUnreachable as exc:
            await self._set(row, error=str(exc), next_at=self._later())
            return
        except BatchApiError as exc:
            await self._unreadable(row, exc)
            return
        values: dict[str, Any] = {
            "remote_status": info.status,
            "completed": info.completed,
            "failed": info.failed,
            "cost": info.cost,
            "provider": info.provider,
            "misses": 0,
            "error": info.error,
        }
        if info.expires_at is not None:
            values["expires_at"] = _epoch(info.expires_at)
        if info.terminal:
            await self._set(
                row, state=RemoteState.COLLECTING, ended_at=_now(), cursor=None, next_at=_now(), **values
            )
            log.info(
                "remote batch ended",
                status=info.status,
                completed=info.completed,
                failed=info.failed,
                cost=str(info.cost) if info.cost is not None else None,
                error=info.error,
                **row.describe(),
            )
            await self._collect(row)
            return
        await self._set(row, next_at=self._later(), **values)
        if row.stopped and row.cancel_sent_at is None and not row.cancel_refused:
            await self._cancel(row)

    async def _unreadable(self, row: _Row, exc: BatchApiError) -> None:
        if exc.status in (404, 410):
            misses = row.misses + 1
            if misses >= GONE_AFTER_MISSES:
                error = f"the remote batch is gone (HTTP {exc.status}: {exc.message})"
                log.warning("remote batch gone; its requests run live", error=error, **row.describe())
                await self._finish(row, RemoteState.DONE, error, error)
                return
            await self._set(row, misses=misses, error=exc.message, next_at=self._later())
            return
        # 402 (its charge unpaid: the results wait for credits), 429, 5xx: read again later.
        await self._set(row, error=f"HTTP {exc.status} ({exc.code}): {exc.message}", next_at=self._later())

    async def _cancel(self, row: _Row) -> None:
        """Its batch was cancelled (or expired): the cancel goes on to OpenRouter, where the key may cancel."""
        assert row.remote_id is not None
        try:
            await self.api.cancel(row.remote_id)
        except BatchApiUnreachable as exc:
            log.warning("remote batch cancel unanswered; tried again", error=str(exc), **row.describe())
            return
        except BatchApiError as exc:
            if exc.status == 403:
                message = (
                    f"OpenRouter refused to cancel the remote batch (HTTP 403: {exc.message}); it runs to its end "
                    "and what it answers is stored, as it is paid"
                )
                await self._set(row, cancel_refused=True, error=message)
                log.warning("remote batch cancel refused", reason=message, **row.describe())
            elif exc.status == 409:
                await self._set(row, cancel_sent_at=_now())
            else:
                log.warning(
                    "remote batch cancel failed; tried again",
                    status=exc.status,
                    error=exc.message,
                    **row.describe(),
                )
            return
        await self._set(row, cancel_sent_at=_now())
        log.info("remote batch cancel passed on", **row.describe())

    # COLLECTING: store its lines, then give back what it left.

    async def _collect(self, row: _Row) -> None:
        assert row.remote_id is not None
        cursor = row.cursor
        while True:
            try:
                page = await self.api.results(row.remote_id, cursor, RESULTS_PAGE_LINES)
            except BatchApiUnreachable as exc:
                await self._set(row, error=str(exc), next_at=self._later())
                return
            except BatchApiError as exc:
                if exc.status in (404, 409, 410) and cursor is None:
                    # No pages for it (a cancelled batch has none; an older API had results inline only).
                    await self._inline(row)
                    return
                await self._set(
                    row, error=f"HTTP {exc.status} ({exc.code}): {exc.message}", next_at=self._later()
                )
                return
            await self._store(row, page.lines)
            if not page.has_more or page.next_cursor is None:
                break
            cursor = page.next_cursor
            # Where to go on from after a restart, and the lease renewed for the next page.
            await self._set(
                row,
                cursor=cursor,
                lease_expires_at=_now() + timedelta(seconds=self.settings.remote_lease_seconds),
            )
        await self._over(row)

    async def _inline(self, row: _Row) -> None:
        assert row.remote_id is not None
        try:
            info = await self.api.get(row.remote_id)
        except (BatchApiUnreachable, BatchApiError) as exc:
            await self._set(row, error=str(exc), next_at=self._later())
            return
        await self._store(row, info.results or [])
        await self._over(row)

    async def _over(self, row: _Row) -> None:
        async with self.engine.connect() as conn:
            status = (
                await conn.execute(
                    text("SELECT remote_status, error FROM remote_batch WHERE id = :id"), {"id": row.id}
                )
            ).one()
        reason = f"its remote batch ended {status.remote_status} without an answer for it" + (
            f" ({status.error})" if status.error else ""
        )
        released = await self._finish(row, RemoteState.DONE, reason[:2000])
        log.info("remote batch done", released=released, **row.describe())

    async def _store(self, row: _Row, lines: list[dict[str, Any]]) -> None:
        """Store a page of lines, each as the attempt (and, for an answer, the result) of its request."""
        wanted = {rid: line for line in lines if (rid := _line_request(line)) is not None}
        if len(wanted) < len(lines):
            log.warning(
                "lines naming no request of orbatch skipped", count=len(lines) - len(wanted), **row.describe()
            )
        if not wanted:
            return
        async with self.engine.connect() as conn:
            waiting = {
                int(r.id): r
                for r in await conn.execute(_WAITING, {"ids": list(wanted), "remote_batch_id": row.id})
            }
        async with self.engine.connect() as conn:
            sent_at = (
                await conn.execute(text("SELECT sent_at FROM remote_batch WHERE id = :id"), {"id": row.id})
            ).scalar_one()
        latency = int((_now() - sent_at).total_seconds() * 1000) if sent_at is not None else None
        answered = failed = 0
        for request_id, line in wanted.items():
            request = waiting.get(request_id)
            if request is None:
                continue  # stored already, or not this batch's
            outcome = line_outcome(row.endpoint, line)
            if isinstance(outcome, Success) and self.check is not None:
                outcome = await self.check(request.body, outcome)
            if outcome.usage is not None:
                await self._price(outcome.usage, outcome.model, row.model)
                self.ctx.meter.used(outcome.model or row.model, outcome.usage)
            call = LineCall(
                request_id,
                row.batch_id,
                row.id,
                row.model,
                self.ctx.owner,
                call_record(outcome, sent_at, latency),
            )
            if isinstance(outcome, Success):
                if await self._answer(call, outcome):
                    answered += 1
                    self.ctx.meter.finished(RequestStatus.COMPLETED)
            else:
                status = await self._failure(call, _as_retry(outcome), request)
                if status is not None:
                    failed += 1
                    if status == RequestStatus.FAILED:
                        self.ctx.meter.finished(RequestStatus.FAILED)
        if answered or failed:
            async with self.engine.connect() as conn:
                await conn.execute(
                    text(
                        "UPDATE remote_batch SET answered = answered + :a, line_failures = line_failures + :f"
                        " WHERE id = :id"
                    ),
                    {"a": answered, "f": failed, "id": row.id},
                )

    async def _price(self, usage: Usage, served: str | None, sent: str) -> None:
        """A line with no cost is priced at the batch variant's list price when there is one."""
        if usage.cost is not None:
            return
        variant = base_model(sent) + BATCH_SUFFIX
        await self.ctx.prices.fill(
            usage, variant if await self.ctx.prices.listed(variant) else served or sent
        )

    async def _answer(self, call: LineCall, success: Success) -> bool:
        body, content = storable(success.raw.decode("utf-8"), success.content)

        async def write() -> bool:
            async with self.engine.connect() as conn:
                return await lifecycle.record_line_answer(conn, call, body, content, success.finish_reason)

        return await persist("line answer", write)

    async def _failure(self, call: LineCall, failure: Failure, request: Any) -> str | None:
        decision = decide(
            failure,
            failures=int(request.failures),
            chain=list(request.chain),
            chain_pos=int(request.chain_pos),
            max_attempts=int(request.max_attempts),
            base=self.settings.retry_base_seconds,
            cap=self.settings.retry_max_seconds,
        )

        async def write() -> str | None:
            async with self.engine.connect() as conn:
                return await lifecycle.record_line_failure(
                    conn,
                    call,
                    status=decision.status,
                    failures=decision.failures,
                    chain_pos=decision.chain_pos,
                    delay_seconds=decision.delay_seconds,
                )

        return await persist("line failure", write)


def _structured(ctx: WorkerContext) -> Callable[[dict[str, Any], Success], Awaitable[Success | Failure]]:
    """An answer to a request that asked for a JSON schema counts only if it follows it, as for a call."""
    return functools.partial(checked_answer, ctx.replies)


async def drive_forever(
    ctx: WorkerContext, api: BatchApiClient, only_batch: str | None, stop: asyncio.Event
) -> None:
    """The driver's loop: a tick every second (or every poll, when polls are faster), until `stop`."""
    driver = RemoteDriver(ctx, api, only_batch, _structured(ctx))
    interval = min(1.0, ctx.settings.remote_poll_seconds)
    try:
        while not stop.is_set():
            try:
                await driver.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the loop must outlive a Postgres or OpenRouter outage
                log.warning("batch lane tick failed", error=redact(f"{type(exc).__name__}: {exc}"))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await asyncio.shield(driver.let_go())
