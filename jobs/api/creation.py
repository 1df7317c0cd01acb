"""`POST /v1/batches`: a stored file becomes a batch, through the same submit as `orbatch submit`.

The request's parameters are checked first (400 for each, naming it). The file is then validated and stored
line by line in one transaction, exactly as a file on disk is; the API's own row (owner, input file, window,
callback) is written inside that transaction, so a batch never exists without its owner. A file with bad
lines makes a `failed` batch whose `errors` list them, as OpenAI reports them, and nothing of it runs.
Each create is a new batch, as with OpenAI, even for a file already used.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, replace
from typing import Any

import orjson
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from jobs.api.callbacks import check_callback_url
from jobs.api.keys import Caller, callback_secret
from jobs.api.schemas import BatchCreate
from jobs.api.state import ApiState, upstream_is_simulated
from jobs.api.storage import StoredSource
from jobs.core.errors import BadInput, NotFound
from jobs.core.logs import get_logger
from jobs.core.sql import sql
from jobs.formats.input_lines import ENDPOINTS
from jobs.submission.choices import batch_options, model_chain
from jobs.submission.estimate import Estimate
from jobs.submission.intake import FirstWindow, Setback, estimate_source, take_in
from jobs.submission.model_names import renamed_note
from jobs.submission.submit import SubmitError, SubmitOptions, new_batch_id

__all__ = ["batch_errors", "create_batch", "estimate_batch", "window_seconds"]

# OpenAI's only window is 24h; free-tier batches can need days (50 free requests a day), so longer windows
# are taken, up to 30 days (OpenAI's longest file expiry).
MIN_COMPLETION_WINDOW_SECONDS = 24 * 3600
MAX_COMPLETION_WINDOW_SECONDS = 30 * 24 * 3600

log = get_logger(__name__)

_WINDOW = re.compile(r"([1-9][0-9]{0,4})([hd])")


def window_seconds(window: str) -> int:
    """A completion window (`24h`, `48h`, `7d`) in seconds; BadInput for anything else."""
    match = _WINDOW.fullmatch(window)
    seconds = 0 if match is None else int(match.group(1)) * (3600 if match.group(2) == "h" else 86400)
    if not MIN_COMPLETION_WINDOW_SECONDS <= seconds <= MAX_COMPLETION_WINDOW_SECONDS:
        raise BadInput(
            f"Invalid value for 'completion_window': {window[:32]!r}. Give hours or days from 24h to 30d, "
            "such as '24h' (OpenAI's only window), '48h' or '7d'.",
            param="completion_window",
            code="invalid_value",
        )
    return seconds


def _models(value: list[str] | str | None, param: str = "models") -> list[str]:
    try:
        return model_chain(value, param)
    except ValueError as exc:
        raise BadInput(str(exc), param=param, code="invalid_value") from None


def batch_errors(exc: SubmitError) -> list[dict[str, Any]]:
    """OpenAI's `errors.data` for a file that was refused: its first bad lines, then how many more."""
    data: list[dict[str, Any]] = [
        {"code": e.code or "invalid_request", "message": e.detail, "param": None, "line": e.line_no}
        for e in exc.errors
    ]
    if not data:
        code = "empty_file" if "no requests in the file" in exc.reason else "invalid_file"
        data.append({"code": code, "message": exc.reason, "param": None, "line": None})
    more = exc.invalid - len(exc.errors)
    if exc.errors and more > 0:
        data.append(
            {
                "code": "too_many_errors",
                "message": f"... and {more} more bad lines",
                "param": None,
                "line": None,
            }
        )
    return data


async def _input_file(conn: AsyncConnection, owner: str, file_id: str) -> Any:
    row = (
        await conn.execute(
            text(
                "SELECT id, filename, purpose, sha256 FROM api_file WHERE id = :id AND owner = :owner"
                " AND (expires_at IS NULL OR expires_at > now())"
            ),
            {"id": file_id, "owner": owner},
        )
    ).one_or_none()
    if row is None:
        raise NotFound(f"No such File object: {file_id[:100]}", param="input_file_id", code="file_not_found")
    if row.purpose != "batch" or row.sha256 is None:
        # Checked before anything is stored: a 400, as OpenAI answers a batch asked from a file of another purpose.
        raise BadInput(
            f"Invalid value for 'input_file_id': the file {file_id} has purpose '{row.purpose}', and a batch "
            "is made only from a file uploaded with purpose 'batch'.",
            param="input_file_id",
            code="invalid_file_purpose",
        )
    return row


def _setback(setback: Setback) -> None:
    """What the intake went on without, in the server's log (the caller's answer does not wait on it)."""
    error = setback.error
    if setback.stage == "catalogue":
        log.warning("model ids not checked: OpenRouter's model list could not be read", error=str(error))
    elif isinstance(error, (OSError, RedisError)):
        # Postgres holds the batch; any worker's feeder queues it once Redis is reachable.
        log.warning(
            "batch stored but not queued yet: Redis unreachable", batch=setback.batch_id, error=str(error)
        )
    else:
        log.warning(
            "batch stored but not queued yet",
            batch=setback.batch_id,
            error=f"{type(error).__name__}: {error}",
        )


# The API's row of a batch, written inside the transaction that stored its requests. Its `model` is OpenAI's:
# the model every request is sent to first (a line's own chain, else the batch's), when that is one model;
# null when requests start with different ones. A batch with no requests (its file refused) says its chain's
# first model. Read once here (one pass over rows just written), so a GET never scans a batch's requests.
_API_ROW = text(
    """
    INSERT INTO api_batch (batch_id, owner, input_file_id, endpoint, completion_window, errors, callback_url,
                           output_expires_seconds, created_at, model)
    SELECT b.id, :owner, :input_file_id, :endpoint, :window, CAST(:errors AS jsonb), :callback_url,
           :output_expires, b.created_at,
           CASE WHEN f.requests = 0 THEN b.models[1] WHEN f.lowest = f.highest THEN f.lowest END
    FROM batch b,
         LATERAL (SELECT count(*) AS requests, min(coalesce(r.models[1], b.models[1])) AS lowest,
                         max(coalesce(r.models[1], b.models[1])) AS highest
                  FROM request r WHERE r.batch_id = b.id) f
    WHERE b.id = :batch_id
    """
)


@dataclass(slots=True, frozen=True)
class _Asked:
    """A create's parameters, checked: the batch's options, its labels, window and callback, its input file."""

    options: SubmitOptions
    metadata: dict[str, str] | None
    window: int
    callback_url: str | None
    file: Any


async def _asked(state: ApiState, caller: Caller, body: BatchCreate) -> _Asked:
    """The parameters of a create checked (400 naming each bad one, 404 for the file), before its lines are."""
    settings = state.settings
    if body.endpoint not in ENDPOINTS:
        raise BadInput(
            f"Invalid value for 'endpoint': {body.endpoint[:64]!r}. orbatch runs {' and '.join(ENDPOINTS)} "
            "batches.",
            param="endpoint",
            code="invalid_value",
        )
    window = window_seconds(body.completion_window)
    metadata = body.metadata
    callback_url = body.callback_url or (metadata or {}).get("callback_url")
    options = batch_options(
        settings,
        models=_models(body.models),
        name=(metadata or {}).get("name"),
        max_attempts=body.max_attempts,
        free_only=body.free_only,
        max_cost=body.max_cost,
        # Each create is a new batch, as with OpenAI, even for a file already used.
        new=True,
        dedupe=body.dedupe,
        owner=caller.owner,
        priority=body.priority,
        replace_models=body.replace_models,
        endpoint=body.endpoint,
        lane=body.lane,
        # `auto` leaves the Batch API out of a window too short for a remote batch's 24 h.
        window_seconds=window,
        feedback=body.feedback,
        heal=body.heal,
        vote=_models(body.vote, "vote"),
    )
    async with state.reads.connect() as conn:
        if callback_url is not None:
            check_callback_url(callback_url, settings)
            if await callback_secret(conn, caller.owner) is None:
                raise BadInput(
                    f"{caller.owner!r} has no secret to sign callbacks with: `orbatch keys create "
                    f"{caller.owner}` makes one",
                    param="callback_url",
                    code="callback_not_allowed",
                )
        file = await _input_file(conn, caller.owner, body.input_file_id)
    return _Asked(options, metadata, window, callback_url, file)


# The bad lines a dry run's 400 names: enough to fix a file's pattern, short enough for one error message.
MAX_NAMED_LINES = 5


def _source(file: Any, state: ApiState) -> StoredSource:
    return StoredSource(state.engine, file.id, file.filename, f"{file.id} ({file.filename})", file.sha256)


async def estimate_batch(state: ApiState, caller: Caller, body: BatchCreate) -> Estimate:
    """What the batch the request describes would hold and cost (`dry_run`): the same checks as a create, its
    lines read through the same intake, and nothing stored; bad lines are a 400 naming them."""
    asked = await _asked(state, caller, body)
    try:
        return await estimate_source(
            state.engine,
            state.settings,
            _source(asked.file, state),
            asked.options,
            upstream=functools.partial(upstream_is_simulated, state),
            warn=_setback,
        )
    except SubmitError as exc:
        # No batch holds `errors` here: the answer itself names the first bad lines (the API takes no
        # skip_invalid: a file is made right, then sent again).
        if not exc.errors:
            raise
        named = exc.errors[:MAX_NAMED_LINES]
        more = exc.invalid - len(named)
        raise BadInput(
            f"{exc.path}: {exc.invalid} bad line{'s' if exc.invalid != 1 else ''}, nothing estimated: "
            + "; ".join(str(e) for e in named)
            + (f" (and {more} more)" if more > 0 else ""),
            param="input_file_id",
            code="invalid_file",
        ) from None


async def create_batch(state: ApiState, caller: Caller, body: BatchCreate) -> str:
    """Make the batch the request describes and queue it; returns its id (a `failed` one for bad lines)."""
    settings = state.settings
    asked = await _asked(state, caller, body)
    options, metadata, window, callback_url, file = (
        asked.options,
        asked.metadata,
        asked.window,
        asked.callback_url,
        asked.file,
    )
    row = {
        "owner": caller.owner,
        "input_file_id": file.id,
        "endpoint": body.endpoint,
        "window": body.completion_window,
        "callback_url": callback_url,
        "output_expires": None if body.output_expires_after is None else body.output_expires_after.seconds,
        "errors": None,
    }

    async def stored(conn: AsyncConnection, batch_id: str) -> None:
        await conn.execute(
            text(
                "UPDATE batch SET metadata = CAST(:metadata AS jsonb),"
                " expires_at = created_at + make_interval(secs => :window) WHERE id = :id"
            ),
            {"id": batch_id, "metadata": _json(metadata), "window": window},
        )
        await conn.execute(_API_ROW, {**row, "batch_id": batch_id})

    source = _source(file, state)
    try:
        taken = await take_in(
            state.engine,
            settings,
            source,
            options,
            # Only workers in front of the same kind of upstream take it (see `records.take_lease`).
            upstream=functools.partial(upstream_is_simulated, state),
            on_stored=stored,
            # The batch is stored: the answer need not wait for its first requests to be queued (a worker's
            # feeder queues them within ORBATCH_FEED_INTERVAL anyway).
            first_window=FirstWindow(state.redis, background=True),
            warn=_setback,
        )
    except SubmitError as exc:
        failed = replace(options, simulated=await upstream_is_simulated(state))
        return await _failed_batch(
            state, failed, source, metadata, window, {**row, "errors": batch_errors(exc)}, exc
        )
    if taken.report.renamed:
        log.info(renamed_note(taken.report.renamed), batch=taken.batch_id, owner=caller.owner)
    return taken.batch_id


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


async def _failed_batch(
    state: ApiState,
    options: SubmitOptions,
    source: StoredSource,
    metadata: dict[str, str] | None,
    window: int,
    row: dict[str, Any],
    exc: SubmitError,
) -> str:
    """A batch that failed validation: its errors, no requests, finished at once."""
    batch_id = new_batch_id()
    async with state.engine.begin() as conn:
        await conn.execute(
            sql(
                """
                INSERT INTO batch (id, name, status, models, max_attempts, free_only, max_cost, dedupe, options,
                                   metadata, source_name, source_sha256, total, invalid_lines, finished_at,
                                   expires_at)
                VALUES (:id, :name, {B.FAILED}, :models, :max_attempts, :free_only, :max_cost, :dedupe,
                        CAST(:options AS jsonb), CAST(:metadata AS jsonb), :source_name, :sha256, 0, :invalid,
                        now(), now() + make_interval(secs => :window))
                """
            ),
            {
                "id": batch_id,
                "name": options.name,
                "models": options.models,
                "max_attempts": options.max_attempts,
                "free_only": options.free_only,
                "max_cost": options.max_cost,
                "dedupe": options.dedupe,
                "options": _json(options.identity()),
                "metadata": _json(metadata),
                "source_name": source.name,
                "sha256": source.sha256,
                "invalid": exc.invalid,
                "window": window,
            },
        )
        await conn.execute(_API_ROW, {**row, "errors": _json(row["errors"]), "batch_id": batch_id})
    return batch_id
