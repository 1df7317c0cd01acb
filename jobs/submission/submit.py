"""Submission: stream a JSONL file into a new batch, all or nothing, in constant memory."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import insert, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from jobs.core.errors import BadInput
from jobs.core.logs import get_logger
from jobs.core.models import Batch
from jobs.core.sql import sql
from jobs.core.states import BatchPriority, BatchStatus, Lane
from jobs.formats.input_lines import (
    EMBEDDING_PARAMS,
    EMBEDDINGS_URL,
    LineError,
    free_only_problem,
    parse_line,
    parse_record,
)
from jobs.formats.long_text import SplitPlan, plan_split
from jobs.formats.prompt_template import Template
from jobs.formats.reader import DamagedGzip, FileSource, Source, read_lines
from jobs.formats.tokens import TokenCounter, completion_cap
from jobs.scheduling import lifecycle
from jobs.submission.lanes import BATCH_SUFFIX, auto_has_room, base_model, batch_models
from jobs.submission.model_names import model_names

__all__ = [
    "EstimateFn",
    "Measured",
    "ModelTokens",
    "ProgressFn",
    "StoredHook",
    "SubmitError",
    "SubmitOptions",
    "SubmitReport",
    "context_needed",
    "context_problem",
    "fingerprint",
    "measure_source",
    "model_problem",
    "new_batch_id",
    "resolve_models",
    "submit_file",
    "submit_source",
]

log = get_logger(__name__)

# Rows per COPY chunk into the staging table: large enough to amortise the round trip. A chunk is also sent
# once its rows hold this many bytes, so that a file of long lines (up to the 16 MiB line limit) keeps submit
# within its memory bound: rows of the chunk, plus COPY's encoding of them, plus one line being parsed.
STAGING_COPY_CHUNK = 5000
STAGING_COPY_BYTES = 16 * 1024 * 1024
# A line longer than this is a bad line; the reader never holds more than this of one line.
MAX_LINE_BYTES = 16 * 1024 * 1024
# A submit of at least this many lines, and at least this share of the table's rows, refreshes its statistics.
RESTAT_MIN_ROWS = 1000
RESTAT_SHARE = 0.05
# The record fields whose order a batch keeps: a table's columns, bounded so that records with ever new keys
# cannot grow the list without end (fields past it keep jsonb's order, after these).
MAX_RECORD_FIELDS = 4096
# A file with a million bad lines reports the first ones and a count, not a million lines of output.
MAX_REPORTED_LINE_ERRORS = 50

ProgressFn = Callable[[int], None]
# Called inside submit's transaction once the batch and its requests are stored, with the batch id: what
# is written there commits, or rolls back, with the batch.
StoredHook = Callable[[AsyncConnection, str], Awaitable[None]]


@dataclass(slots=True, frozen=True)
class ModelTokens:
    """What a batch asks of one model (the first of its requests' chains): requests, the prompt tokens they
    hold, and the completion tokens their `max_tokens` allow (`unbounded` requests set none)."""

    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    unbounded: int


@dataclass(slots=True, frozen=True)
class SubmitOptions:
    """What the user chose at submit time."""

    models: list[str] = field(default_factory=list)
    name: str | None = None
    max_attempts: int = 5
    skip_invalid: bool = False
    max_line_bytes: int = MAX_LINE_BYTES
    free_only: bool = False
    max_cost: Decimal | None = None
    # Model ids OpenRouter lists (GET /models); None when the list could not be had, so ids go unchecked.
    known_models: frozenset[str] | None = None
    # Of those, the embedding models (GET /embeddings/models): a line's chain must be of its endpoint's kind.
    embedding_models: frozenset[str] = frozenset()
    # Each listed model's context window in tokens (those the list gives one): a line no model of its chain can
    # hold is refused. Empty when the list could not be had: every chain is taken to fit.
    contexts: Mapping[str, int] = field(default_factory=dict)
    # Always make a new batch, even for a file already submitted with the same options.
    new: bool = False
    # Answer a request identical to one already answered (same chain, messages, parameters) from its result.
    dedupe: bool = False
    # Lines are plain records that fill this template, not chat requests.
    template: Template | None = None
    # The batch is worked against the local simulator: none of its calls are a real account's.
    simulated: bool = False
    # A user's own labels for the batch (`--metadata k=v`), not part of its identity.
    metadata: dict[str, str] | None = None
    # Body parameters every request gets unless its line sets them (`--temperature`, `--param k=v`).
    defaults: dict[str, Any] = field(default_factory=dict)
    # The API owner the batch is made for; None for the CLI's batches, which no API owner's ever match.
    owner: str | None = None
    # Which batches run first (not part of the identity: a batch submitted again keeps its own, or takes this
    # one when it is given outright). None: `normal` for a new batch.
    priority: BatchPriority | None = None
    # The batch's chain replaces every line's own `model`/`models` (a file written for other models).
    replace_models: bool = False
    # The endpoint every line must be for (the API's `endpoint`); None: the first line's.
    endpoint: str | None = None
    # How the requests reach OpenRouter: live calls, OpenRouter's Batch API (`batch`), or the Batch API for the
    # requests whose first model has a batch variant when the completion window leaves room (`auto`).
    lane: Lane = Lane.LIVE
    # The batch's completion window (an API batch's), which `auto` must leave room in; None: none.
    window_seconds: int | None = None
    # After a reply that fails its schema, the retry quotes it and says what was wrong (off: the same prompt).
    feedback: bool = True
    # Ask OpenRouter's response-healing plugin to repair malformed JSON in replies to schema requests.
    heal: bool = False
    # Send each record to every one of these models (not a chain: all of them), one request each, and vote
    # (`jobs.formats.votes`); empty: no vote. The lines' own models are not used.
    vote: list[str] = field(default_factory=list)
    # The record field holding the right answer, for the batch page's score; not part of the identity.
    gold: str | None = None
    # `split`: a templated record too long for every model of its chain is summarised in parts (its long field
    # cut into chunks, each summarised, the summaries combined) instead of being a bad line. None: refused.
    long: str | None = None
    # The record field a split cuts (`a.b` for a nested one); None: the longest string field the template uses.
    long_field: str | None = None

    def identity(self) -> dict[str, Any]:
        """The options that make a batch what it is: the same file with these gives the same batch."""
        return {
            **({"owner": self.owner} if self.owner is not None else {}),
            "models": self.models,
            "max_attempts": self.max_attempts,
            "free_only": self.free_only,
            "max_cost": None if self.max_cost is None else str(self.max_cost),
            "skip_invalid": self.skip_invalid,
            "dedupe": self.dedupe,
            **({"template": self.template.to_json()} if self.template is not None else {}),
            # A real run of a file tried against the simulator is a new batch: the simulator's answers are not
            # a model's.
            **({"simulated": True} if self.simulated else {}),
            **({"defaults": self.defaults} if self.defaults else {}),
            **({"replace_models": True} if self.replace_models else {}),
            # Another lane is another batch: the same file run live and at the batch price are two runs.
            **({"lane": self.lane.value} if self.lane is not Lane.LIVE else {}),
            # Named only when not the default, so batches stored before these options keep their identity.
            **({"feedback": False} if not self.feedback else {}),
            **({"heal": True} if self.heal else {}),
            **({"vote": self.vote} if self.vote else {}),
            **({"long": self.long} if self.long is not None else {}),
            # Read by the worker from the batch's options to cut the same field.
            **({"long_field": self.long_field} if self.long_field is not None else {}),
        }

    def lane_contexts(self) -> dict[str, int]:
        """The context a remote batch of each model runs with, for the first models the list gives one: the
        smallest of the model's, its base's and its `:batch` variant's listed contexts (the slug sent is one of
        those, and the one that holds least decides). A request it cannot hold is not sent to the batch lane."""
        if not self.contexts:
            return {}
        models = set(self.contexts) | {base_model(m) for m in self.contexts}
        lane: dict[str, int] = {}
        for model in models:
            base = base_model(model)
            listed = [self.contexts[m] for m in (model, base, base + BATCH_SUFFIX) if m in self.contexts]
            if listed:
                lane[model] = min(listed)
        return lane

    def lane_takes(self) -> tuple[bool, list[str]]:
        """Which requests are born in the batch lane: all of them (`batch`), or those whose chain's first model
        is one of the list (`auto`: the models with a batch variant in the catalogue, when the window leaves
        room; none when the catalogue could not be read)."""
        if self.lane is Lane.BATCH:
            return True, []
        if self.lane is Lane.AUTO and self.known_models is not None and auto_has_room(self.window_seconds):
            return False, sorted(batch_models(self.known_models))
        return False, []


@dataclass(slots=True)
class SubmitReport:
    """The batch created and the lines left out of it."""

    batch_id: str
    total: int
    invalid: int
    errors: list[LineError]
    # True when the same file with the same options was already a batch, which is returned instead.
    reused: bool = False
    # The tokens its requests hold, by model (none for a batch found again: it was measured when stored).
    tokens: list[ModelTokens] = field(default_factory=list)
    # Model names the lines gave that were taken as OpenRouter's ids (`gpt-4o-mini`: `openai/gpt-4o-mini`).
    renamed: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class Measured:
    """A file read and checked as submit reads it, and stored nowhere: its requests, bad lines and tokens."""

    total: int
    invalid: int
    errors: list[LineError]
    tokens: list[ModelTokens]


# What a batch's estimate is, as the batch row keeps it, from what its file holds.
EstimateFn = Callable[[Measured], dict[str, Any]]


class SubmitError(BadInput):
    """A file that was not queued: the first bad lines and how many there were."""

    def __init__(
        self,
        path: str,
        errors: list[LineError],
        invalid: int,
        reason: str | None = None,
        *,
        estimating: bool = False,
    ) -> None:
        self.path = path
        self.errors = errors
        self.invalid = invalid
        # `estimating`: the file was being read for an estimate, which queues nothing in any case.
        done, verb = ("estimated", "estimate") if estimating else ("queued", "queue")
        self.reason = reason or (
            f"{path}: {invalid} bad line{'s' if invalid != 1 else ''}; nothing was {done} "
            f"(fix {'them' if invalid != 1 else 'it'}, or pass --skip-invalid to {verb} the good lines)"
        )
        more = invalid - len(errors)
        details = tuple(str(e) for e in errors) + ((f"... and {more} more bad lines",) if more > 0 else ())
        super().__init__(self.reason, code="invalid_file", details=details)


class _LineErrors:
    """Counts every bad line and keeps the first few."""

    def __init__(self) -> None:
        self.count = 0
        self.kept: list[LineError] = []

    def add(self, error: LineError) -> None:
        self.count += 1
        if len(self.kept) < MAX_REPORTED_LINE_ERRORS:
            self.kept.append(error)


def resolve_models(
    models: list[str], options: SubmitOptions, renamed: dict[str, str] | None = None
) -> list[str]:
    """The chain with each name as OpenRouter's id (`gpt-4o-mini` as `openai/gpt-4o-mini`), each rename put in
    `renamed`; ValueError for an unknown or ambiguous name, or a paid model in a free-only batch."""
    resolved = models
    if options.known_models is not None:
        names = model_names(options.known_models)
        resolved = [names.resolve(model) for model in models]
        if renamed is not None and resolved != models:
            renamed.update((a, b) for a, b in zip(models, resolved, strict=True) if a != b)
    for model in resolved:
        if options.free_only and not model.endswith(":free"):
            raise ValueError(
                f"--free-only: {model!r} is not a free model (a free variant's id ends in ':free')"
            )
    return resolved


def _kind_problem(chain: list[str], endpoint: str, options: SubmitOptions) -> str | None:
    """A model of the chain that cannot answer the endpoint's requests (an embedding model for chat, or the other
    way round), said with the list that has it; None when the catalogue is not known."""
    if options.known_models is None:
        return None
    embeddings = endpoint == EMBEDDINGS_URL
    for model in chain:
        if (model in options.embedding_models) != embeddings:
            if embeddings:
                return (
                    f"{model!r} is not an embedding model (OpenRouter lists it under GET /models, for chat); "
                    "an embeddings request needs one of GET /embeddings/models"
                )
            return (
                f"{model!r} is an embedding model (GET /embeddings/models): it does not answer chat requests"
            )
    return None


def model_problem(models: list[str], options: SubmitOptions) -> str | None:
    """What is wrong with a model chain under the options (an unknown id, a paid model in a free-only batch)."""
    try:
        resolve_models(models, options)
    except ValueError as exc:
        return str(exc)
    return None


def new_batch_id() -> str:
    """A fresh batch id in OpenAI's style."""
    return f"batch_{secrets.token_hex(8)}"


def fingerprint(models: list[str], body: dict[str, Any]) -> str:
    """What makes two requests the same request: the model chain and the body, keys in any order."""
    return hashlib.sha256(
        orjson.dumps({"models": models, "body": body}, option=orjson.OPT_SORT_KEYS)
    ).hexdigest()


# The batch a re-submitted file already is: the same bytes and options, and not one that was stopped for good.
_SAME_BATCH = sql(
    "SELECT id, total, invalid_lines FROM batch WHERE source_sha256 = :sha AND options = CAST(:options AS jsonb)"
    " AND status NOT IN ({B.CANCELLING}, {B.CANCELLED}, {B.FAILED}, {B.EXPIRED}) ORDER BY created_at DESC LIMIT 1"
)

# A staging row: line, custom_id, body, models, fingerprint, record, prompt tokens, completion tokens allowed;
# for a record split in parts (`--long split`), its chunk size, what its largest part needs of a context and its
# calls (the prompt and completion tokens are then its parts' together, roughly).
_Row = tuple[
    int,
    str,
    str,
    list[str] | None,
    str | None,
    str | None,
    int,
    int | None,
    int | None,
    int | None,
    int | None,
]
# A row as parsed, before its prompt is counted (with the rest of its chunk, in one call): the same, without
# the prompt tokens.
_Parsed = tuple[int, str, str, list[str] | None, str | None, str | None, int | None]
_STAGING_COLUMNS = [
    "line_no",
    "custom_id",
    "body",
    "models",
    "fingerprint",
    "record",
    "prompt_tokens",
    "completion_tokens",
    "split_tokens",
    "context_needed",
    "calls",
]
_STAGING_TABLE = text(
    "CREATE TEMP TABLE orbatch_staging (line_no integer, custom_id text, body jsonb, models text[],"
    " fingerprint text, record jsonb, prompt_tokens integer, completion_tokens integer, split_tokens integer,"
    " context_needed integer, calls integer) ON COMMIT DROP"
)


def _damaged(source: Source, line_no: int, errors: _LineErrors, exc: DamagedGzip) -> SubmitError:
    """Damaged gzip data is a SubmitError saying where it broke, not a traceback."""
    return SubmitError(
        source.where,
        errors.kept,
        errors.count,
        reason=f"{source.where}: the gzip data is damaged after line {line_no} ({exc}); nothing was queued "
        "(check the file, or submit it uncompressed)",
    )


@dataclass(slots=True)
class _Gathered:
    """What the lines tell of the whole batch as they are read."""

    # The ordered union of the records' fields.
    fields: dict[str, None] = field(default_factory=dict)
    # Model names taken as OpenRouter's ids.
    renamed: dict[str, str] = field(default_factory=dict)
    # The batch's endpoint: the options', else its first line's.
    endpoint: str | None = None


def _row(
    raw: bytes, line_no: int, options: SubmitOptions, gathered: _Gathered, counter: TokenCounter
) -> _Parsed | None:
    """The staging row of one line, its prompt added to `counter`; None for a blank line; LineError for a bad
    one (a line for another endpoint than the batch's included)."""
    template = options.template
    parsed = parse_line(raw, line_no) if template is None else parse_record(raw, line_no, template)
    if parsed is None:
        return None
    if gathered.endpoint is None:
        gathered.endpoint = parsed.endpoint
    elif parsed.endpoint != gathered.endpoint:
        if options.endpoint is not None:
            # The batch was asked for one endpoint (the API's `endpoint`): the file may well be all of the other.
            detail = f"create the batch with endpoint {parsed.endpoint!r} for a file of such requests"
        else:
            detail = "a batch runs one endpoint; submit the two kinds as two files"
        raise LineError(
            line_no,
            f"a {parsed.endpoint} request in a batch of {gathered.endpoint} requests ({detail})",
            "invalid_url",
        )
    if (parsed.models is None or options.replace_models) and not options.models:
        raise LineError(
            line_no,
            'no model: give the batch a model chain (--models, or `models` through the API) or the line a "model"'
            ' or "models"',
            "missing_required_parameter",
        )
    models = None if options.replace_models or options.vote else parsed.models
    if models is not None:
        try:
            models = resolve_models(models, options, gathered.renamed)
        except ValueError as exc:
            raise LineError(line_no, str(exc), "invalid_model") from None
    if options.defaults and parsed.endpoint == EMBEDDINGS_URL:
        unfit = sorted(set(options.defaults) - EMBEDDING_PARAMS)
        if unfit:
            raise LineError(
                line_no,
                f"{', '.join(repr(k) for k in unfit)} given for every request (--temperature, --max-tokens, "
                "--param) does not apply to an embeddings request; leave it out for an embeddings file",
                "invalid_request",
            )
    body = {**options.defaults, **parsed.body} if options.defaults else parsed.body
    if options.free_only:
        problem = free_only_problem(body)
        if problem:
            raise LineError(line_no, problem)
    chain = models or options.models
    problem = _kind_problem(chain, parsed.endpoint, options)
    if problem:
        raise LineError(line_no, problem, "invalid_model")
    print_ = fingerprint(chain, body) if options.dedupe else None
    record = None
    if parsed.record is not None:
        record = orjson.dumps(parsed.record).decode()
        if len(gathered.fields) < MAX_RECORD_FIELDS:
            gathered.fields.update(dict.fromkeys(parsed.record))
    # Its first model is the one called (the rest only if that one fails): the prompt is counted as it reads it.
    counter.add(chain[0], body)
    return (
        line_no,
        parsed.custom_id,
        orjson.dumps(body).decode(),
        models,
        print_,
        record,
        completion_cap(body),
    )


def context_problem(chain: list[str], needed: int, contexts: Mapping[str, int]) -> str | None:
    """Why no model of the chain can take a request asking `needed` tokens of its context (prompt and completion
    bound), naming each with its context; None when one can (a model of unknown context is taken to)."""
    if not contexts or any(contexts.get(model, needed) >= needed for model in chain):
        return None
    listed = ", ".join(f"{model} (context {contexts[model]})" for model in chain)
    return f"the prompt and its max_tokens (~{needed} tokens) fit no model of its chain: {listed}"


def context_needed(prompt_tokens: int, completion_tokens: int | None) -> int:
    """The tokens a request asks of a model's context: its prompt, plus its completion bound when it sets one
    (OpenRouter refuses a prompt plus `max_tokens` over the context; without `max_tokens` only the prompt must
    fit, and the model stops at its context's end)."""
    return prompt_tokens + (completion_tokens or 0)


def _counted(
    chunk: list[_Parsed], counter: TokenCounter, options: SubmitOptions, errors: _LineErrors
) -> list[_Row]:
    """The chunk's rows with their prompt tokens, counted together; a row no model of its chain can hold goes to
    `errors`."""
    rows: list[_Row] = []
    for row, tokens in zip(chunk, counter.counts(), strict=True):
        needed = context_needed(tokens, row[6])
        # A vote needs every model to hold the record; a chain, one of its models.
        chain = options.vote or row[3] or options.models
        chains = [[model] for model in options.vote] if options.vote else [chain]
        problem = next(
            (p for p in (context_problem(c, needed, options.contexts) for c in chains) if p is not None), None
        )
        if problem is None:
            rows.append((*row[:6], tokens, row[6], None, None, None))
            continue
        split = _split(row, chain, options)
        if isinstance(split, str):
            errors.add(LineError(row[0], f"{problem}{split}", "context_length_exceeded"))
            continue
        completion = None if row[6] is None else row[6] * split.calls
        rows.append(
            (*row[:6], split.prompt_tokens, completion, split.split_tokens, split.context_needed, split.calls)
        )
    return rows


def _split(row: _Parsed, chain: list[str], options: SubmitOptions) -> SplitPlan | str:
    """How a templated record too long for its chain is summarised in parts (`--long split`), sized for the
    smallest window of the chain, so every part fits every model; else what to add to its bad line's message."""
    if options.long != "split" or options.template is None or row[5] is None:
        return ""
    if options.template.embed:
        return " (--long split summarises a chat prompt; a text to embed is not split)"
    window = min(options.contexts[model] for model in chain if model in options.contexts)
    plan = plan_split(options.template, orjson.loads(row[5]), window, row[6], options.long_field)
    return f"; and with --long split, {plan}" if isinstance(plan, str) else plan


async def _records(
    source: Source,
    options: SubmitOptions,
    errors: _LineErrors,
    progress: ProgressFn | None,
    gathered: _Gathered,
) -> AsyncIterator[list[_Row]]:
    """Chunks of staging rows (line, custom_id, body, models, fingerprint, record, tokens), bad lines into
    `errors`.

    A chunk goes once it has STAGING_COPY_CHUNK rows or STAGING_COPY_BYTES of them, so memory is bounded by
    bytes whatever the lines' sizes.
    """
    counter = TokenCounter()
    chunk: list[_Parsed] = []
    size = 0
    line_no = 0
    lines = read_lines(source, options.max_line_bytes, progress)
    try:
        async for block in lines:
            for line_no, raw in block:
                if raw is None:
                    errors.add(
                        LineError(
                            line_no,
                            f"longer than the {options.max_line_bytes} byte limit for one line",
                            "line_too_long",
                        )
                    )
                    continue
                try:
                    row = _row(raw, line_no, options, gathered, counter)
                except LineError as exc:
                    errors.add(exc)
                    continue
                if row is None:
                    continue
                chunk.append(row)
                size += len(row[2]) + len(row[5] or "")
                if len(chunk) >= STAGING_COPY_CHUNK or size >= STAGING_COPY_BYTES:
                    yield _counted(chunk, counter, options, errors)
                    chunk, size = [], 0
    except DamagedGzip as exc:
        raise _damaged(source, line_no, errors, exc) from None
    if chunk:
        yield _counted(chunk, counter, options, errors)


async def _duplicates(conn: AsyncConnection, errors: _LineErrors) -> int:
    # The first duplicates and how many there are, in one bounded answer whatever their number.
    rows = (
        await conn.execute(
            text(
                "SELECT line_no, custom_id, first, count(*) OVER () AS total FROM ("
                " SELECT line_no, custom_id, min(line_no) OVER (PARTITION BY custom_id) AS first FROM orbatch_staging"
                ") s WHERE line_no <> first ORDER BY line_no LIMIT :keep"
            ),
            {"keep": MAX_REPORTED_LINE_ERRORS},
        )
    ).all()
    for line_no, custom_id, first, _ in rows:
        errors.add(
            LineError(
                line_no,
                f"duplicate custom_id {orjson.dumps(custom_id).decode()} (first on line {first})",
                "duplicate_custom_id",
            )
        )
    if not rows:
        return 0
    errors.count += int(rows[0].total) - len(rows)
    return int(rows[0].total)


async def submit_file(
    engine: AsyncEngine, path: Path, options: SubmitOptions, progress: ProgressFn | None = None
) -> SubmitReport:
    """Create a batch from a file on disk; see submit_source."""
    return await submit_source(engine, FileSource.open(path), options, progress)


async def _stage(
    conn: AsyncConnection,
    source: Source,
    options: SubmitOptions,
    errors: _LineErrors,
    progress: ProgressFn | None,
    gathered: _Gathered,
    estimating: bool = False,
) -> int:
    """Every good line of the source into the transaction's staging table; returns the duplicate ids' count.

    Raises SubmitError for bad lines unless `options.skip_invalid`."""
    await conn.execute(_STAGING_TABLE)
    raw_conn: Any = (await conn.get_raw_connection()).driver_connection
    async for chunk in _records(source, options, errors, progress, gathered):
        await raw_conn.copy_records_to_table("orbatch_staging", records=chunk, columns=_STAGING_COLUMNS)
    duplicates = await _duplicates(conn, errors)
    errors.kept.sort(key=lambda e: e.line_no)
    if errors.count and not options.skip_invalid:
        raise SubmitError(source.where, errors.kept, errors.count, estimating=estimating)
    return duplicates


def _empty(source: Source, errors: _LineErrors) -> SubmitError:
    reason = f"{source.name}: no requests in the file" + (" (every line was bad)" if errors.count else "")
    return SubmitError(source.name, errors.kept, errors.count, reason=reason)


# The staged requests' tokens by the first model of their chain; of duplicate ids, the first line only (the
# one the batch keeps).
_MEASURE = """
    SELECT coalesce(models[1], CAST(:first AS text)) AS model, coalesce(sum(coalesce(calls, 1)), 0) AS requests,
           coalesce(sum(prompt_tokens), 0) AS prompt_tokens, coalesce(sum(completion_tokens), 0) AS completion_tokens,
           count(*) FILTER (WHERE completion_tokens IS NULL) AS unbounded
    FROM {rows} GROUP BY 1 ORDER BY 2 DESC, 1
"""
_ONCE = "(SELECT DISTINCT ON (custom_id) * FROM orbatch_staging ORDER BY custom_id, line_no) s"
_STAGED = text(_MEASURE.format(rows="orbatch_staging"))
_STAGED_ONCE = text(_MEASURE.format(rows=_ONCE))
# A vote's requests: every staged record once per model voting.
_VOTED = " CROSS JOIN unnest(CAST(:voters AS text[])) AS v(voter)"
_STAGED_VOTES = text(
    _MEASURE.replace("coalesce(models[1], CAST(:first AS text))", "v.voter").format(
        rows="orbatch_staging" + _VOTED
    )
)
_STAGED_VOTES_ONCE = text(
    _MEASURE.replace("coalesce(models[1], CAST(:first AS text))", "v.voter").format(rows=_ONCE + _VOTED)
)


async def _measure(conn: AsyncConnection, options: SubmitOptions, duplicates: int) -> list[ModelTokens]:
    """The staged requests' tokens, by model."""
    first = options.models[0] if options.models else None
    if options.vote:
        query = _STAGED_VOTES_ONCE if duplicates else _STAGED_VOTES
        rows = await conn.execute(query, {"first": first, "voters": options.vote})
    else:
        rows = await conn.execute(_STAGED_ONCE if duplicates else _STAGED, {"first": first})
    return [
        ModelTokens(
            model=r.model,
            requests=int(r.requests),
            prompt_tokens=int(r.prompt_tokens),
            completion_tokens=int(r.completion_tokens),
            unbounded=int(r.unbounded),
        )
        for r in rows
    ]


async def measure_source(
    engine: AsyncEngine, source: Source, options: SubmitOptions, progress: ProgressFn | None = None
) -> Measured:
    """Read and check the source exactly as submit_source does (the same SubmitError for bad lines) and count
    its requests' tokens, in a transaction rolled back at the end: nothing is stored."""
    errors = _LineErrors()
    async with engine.connect() as conn:
        transaction = await conn.begin()
        try:
            gathered = _Gathered(endpoint=options.endpoint)
            duplicates = await _stage(conn, source, options, errors, progress, gathered, estimating=True)
            tokens = await _measure(conn, options, duplicates)
        finally:
            await transaction.rollback()
    total = sum(t.requests for t in tokens)
    if total == 0:
        raise _empty(source, errors)
    return Measured(total=total, invalid=errors.count, errors=errors.kept, tokens=tokens)


# Whether a request fits its first model's remote batch: the model's listed context (`lane_contexts`) holds its
# prompt and completion bound; true when the context is not known.
_LANE_FITS = (
    "coalesce(prompt_tokens + coalesce(completion_tokens, 0) <= CAST(CAST(:lane_contexts AS jsonb) ->> {first}"
    " AS bigint), true)"
)
_INSERT = (
    "INSERT INTO request (batch_id, custom_id, line_no, body, models, fingerprint, record, context_needed,"  # noqa: S608 - SQL built from constants; every value is a bind parameter
    " split_tokens, status) SELECT :batch_id, custom_id, line_no, body, models, fingerprint, record,"
    " coalesce(context_needed, prompt_tokens + coalesce(completion_tokens, 0)), split_tokens,"
    # A record summarised in parts runs live: its parts are calls made one after the other.
    " CASE WHEN split_tokens IS NULL"
    " AND (:every OR (coalesce(models, CAST(:chain AS text[])))[1] = ANY(CAST(:firsts AS text[])))"
    " AND " + _LANE_FITS.format(first="(coalesce(models, CAST(:chain AS text[])))[1]") + " THEN {R.REMOTE}"
    " ELSE {R.PENDING} END"
    " FROM orbatch_staging ORDER BY line_no"
)
# A vote's requests: each record once per model, each a chain of that model alone, in line order then the
# models' order. With --dedupe, the fingerprint is the record's with the model's own: one model's answer is
# never reused as another's.
_INSERT_VOTES = (
    "INSERT INTO request (batch_id, custom_id, line_no, body, models, fingerprint, record, context_needed, status,"  # noqa: S608 - SQL built from constants; every value is a bind parameter
    " voter, split_tokens) SELECT :batch_id, custom_id, line_no, body, ARRAY[v.voter],"
    " CASE WHEN fingerprint IS NOT NULL THEN encode(sha256(convert_to(fingerprint || ' ' || v.voter, 'UTF8')),"
    " 'hex') END, record, coalesce(context_needed, prompt_tokens + coalesce(completion_tokens, 0)),"
    " CASE WHEN split_tokens IS NULL AND (:every OR v.voter = ANY(CAST(:firsts AS text[]))) AND "
    + _LANE_FITS.format(first="v.voter")
    + " THEN {R.REMOTE} ELSE {R.PENDING} END, v.voter, split_tokens"
    " FROM orbatch_staging CROSS JOIN unnest(CAST(:voters AS text[])) WITH ORDINALITY AS v(voter, n)"
    " ORDER BY line_no, v.n"
)


async def submit_source(
    engine: AsyncEngine,
    source: Source,
    options: SubmitOptions,
    progress: ProgressFn | None = None,
    on_stored: StoredHook | None = None,
    estimate: EstimateFn | None = None,
) -> SubmitReport:
    """Create a batch from the source in one transaction; raises SubmitError and stores nothing on bad lines.

    `estimate` makes the estimate the batch keeps from its requests' tokens."""
    sha256 = source.sha256
    batch_id = new_batch_id()
    errors = _LineErrors()
    async with engine.begin() as conn:
        # Two submits of the same file take turns, so the second finds the first's batch.
        await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:sha))"), {"sha": sha256})
        if not options.new:
            existing = (
                await conn.execute(
                    _SAME_BATCH,
                    {"sha": sha256, "options": orjson.dumps(options.identity()).decode()},
                )
            ).one_or_none()
            if existing is not None:
                if options.gold is not None:
                    await conn.execute(update(Batch).where(Batch.id == existing.id).values(gold=options.gold))
                if options.priority is not None:
                    # Given outright on a batch submitted again: the user means it for that batch now.
                    await conn.execute(
                        update(Batch).where(Batch.id == existing.id).values(priority=options.priority)
                    )
                return SubmitReport(existing.id, existing.total, existing.invalid_lines, [], reused=True)
        await conn.execute(
            insert(Batch).values(
                id=batch_id,
                name=options.name,
                status=BatchStatus.VALIDATING,
                models=options.models,
                max_attempts=options.max_attempts,
                free_only=options.free_only,
                max_cost=options.max_cost,
                dedupe=options.dedupe,
                options=options.identity(),
                template=None if options.template is None else options.template.to_json(),
                source_name=source.name,
                simulated=options.simulated,
                metadata_=options.metadata,
                source_sha256=sha256,
                priority=options.priority or BatchPriority.NORMAL,
                lane=options.lane,
                gold=options.gold,
            )
        )
        gathered = _Gathered(endpoint=options.endpoint)
        duplicates = await _stage(conn, source, options, errors, progress, gathered)
        # ON CONFLICT only when there are duplicates to skip: its speculative insertion costs a third of the
        # INSERT's time on a million rows, and a new batch has no other rows to conflict with.
        on_conflict = " ON CONFLICT (batch_id, custom_id, voter) DO NOTHING" if duplicates else ""
        # A request the batch lane takes is born `remote`: no live worker ever leases it. One whose first model's
        # remote batch cannot hold it (its listed context, `lane_contexts`) is born `pending` instead: a remote
        # batch has one model and no chain to move on to, while a live call skips the models too small for it.
        every, first_models = options.lane_takes()
        values = {
            "batch_id": batch_id,
            "every": every,
            "chain": options.models,
            "firsts": first_models,
            "lane_contexts": orjson.dumps(
                options.lane_contexts() if (every or first_models) else {}
            ).decode(),
        }
        if options.vote:
            inserted = await conn.execute(
                sql(_INSERT_VOTES + on_conflict), {**values, "voters": options.vote}
            )
        else:
            inserted = await conn.execute(sql(_INSERT + on_conflict), values)
        total = inserted.rowcount
        if total == 0:
            raise _empty(source, errors)
        tokens = await _measure(conn, options, duplicates)
        kept: dict[str, Any] = {}
        if gathered.fields:
            kept["record_fields"] = list(gathered.fields)
        if estimate is not None:
            kept["estimate"] = estimate(Measured(total, errors.count, errors.kept, tokens))
        if kept:
            await conn.execute(update(Batch).where(Batch.id == batch_id).values(**kept))
        await lifecycle.start_batch(conn, batch_id, total, errors.count)
        if on_stored is not None:
            await on_stored(conn, batch_id)
    await _restat(engine, total)
    return SubmitReport(
        batch_id=batch_id,
        total=total,
        invalid=errors.count,
        errors=errors.kept,
        tokens=tokens,
        renamed=gathered.renamed,
    )


async def _restat(engine: AsyncEngine, added: int) -> None:
    """Refresh the planner's statistics of the request table after a submit that changed it noticeably.

    Autovacuum analyzes a table only once a tenth of it changed, and a fresh database's first batches are all of
    it: until then the planner takes the pending requests for a handful, and the feeder's and the workers' plans
    cost time in proportion to the backlog (measured: 100,000 requests in 50 batches ran at 200 answers/s at
    the start and 500 at the end without it, 500 throughout with it). ANALYZE samples a bounded number of rows,
    so it costs about the same on any table; it blocks no reads or writes.
    """
    if added < RESTAT_MIN_ROWS:
        return
    try:
        async with engine.begin() as conn:
            rows = (
                await conn.execute(text("SELECT reltuples FROM pg_class WHERE oid = 'request'::regclass"))
            ).scalar()
            if rows is not None and rows > 0 and added < RESTAT_SHARE * rows:
                return
            await conn.execute(text("ANALYZE request"))
    except DBAPIError as exc:
        # The batch is stored; statistics are an optimisation autovacuum will catch up with.
        log.warning("the request table's statistics were not refreshed", error=str(exc))
