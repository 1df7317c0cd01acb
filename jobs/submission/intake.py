"""The one intake every surface submits through: model ids checked, simulated or real decided, the batch stored
(or the one it already is found) with its estimate, its first window queued; or, for a dry run, the estimate
alone, with nothing stored."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any, Literal

import httpx
from arq.connections import ArqRedis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.core.errors import BadInput
from jobs.core.settings import Settings
from jobs.formats.reader import Source
from jobs.scheduling.feeder import feed
from jobs.scheduling.fleet import kind_queue
from jobs.scheduling.queue import connect
from jobs.submission.catalog import Catalog, load_catalog, upstream_is_simulator
from jobs.submission.estimate import Estimate, FreeQuota, free_quota, price
from jobs.submission.submit import (
    Measured,
    ProgressFn,
    StoredHook,
    SubmitOptions,
    SubmitReport,
    measure_source,
    resolve_models,
    submit_source,
)

__all__ = ["FirstWindow", "Intake", "ModelRefused", "Setback", "StoringView", "estimate_source", "take_in"]

# Whether the upstream a batch is made for now is orbatch's simulator.
UpstreamCheck = Callable[[], Awaitable[bool]]
# A context the storing runs in (a progress bar, say), yielding what is told of the bytes read so far.
StoringView = Callable[[], AbstractContextManager[ProgressFn | None]]


class ModelRefused(BadInput):
    """A model chain the intake refuses (an id the catalogue lacks, a paid model in a free-only batch)."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(problem, param="models", code="invalid_value")


@dataclass(slots=True, frozen=True)
class Setback:
    """Something the intake went on without: the model list (ids unchecked) or Redis (the window not queued
    now; any worker's feeder queues it later). A surface says it its own way."""

    stage: Literal["catalogue", "queue"]
    error: BaseException
    batch_id: str | None = None


@dataclass(slots=True, frozen=True)
class FirstWindow:
    """Where the first window is queued: a Redis URL (connected for it) or a connection the caller keeps."""

    redis: str | ArqRedis
    # Return once the batch is stored and queue in a task of its own (a worker's feeder would anyway).
    background: bool = False


@dataclass(slots=True, frozen=True)
class Intake:
    """What was taken in: the batch (made now, or the one the same file and options already are) and the
    options it was stored with (simulated decided, known models filled in)."""

    report: SubmitReport
    options: SubmitOptions

    @property
    def batch_id(self) -> str:
        """The batch's id."""
        return self.report.batch_id


def _ignore(_: Setback) -> None:
    pass


# Background queueing tasks still running, held so that none is collected half done.
_FEEDING: set[asyncio.Task[None]] = set()


async def take_in(
    engine: AsyncEngine,
    settings: Settings,
    source: Source,
    options: SubmitOptions,
    *,
    check_models: bool = True,
    upstream: UpstreamCheck | None = None,
    storing: StoringView | None = None,
    on_stored: StoredHook | None = None,
    first_window: FirstWindow | None = None,
    warn: Callable[[Setback], None] = _ignore,
) -> Intake:
    """Take `source` in as a batch under `options`, or find the batch it already is (unless `options.new`).

    The batch is simulated when the options say so or `upstream` (default: asking OPENROUTER_BASE_URL) finds
    the simulator. With `check_models`, ids are checked against the catalogue (ModelRefused; a list that
    cannot be read is a Setback and leaves them unchecked). Bad lines raise SubmitError. The batch keeps its
    estimate, priced with the catalogue. `on_stored` runs in the storing transaction; with `first_window` the
    batch's first requests are queued in its kind's queue.
    """
    options, catalog, chain_renamed = await _checked(engine, settings, options, check_models, upstream, warn)

    def estimate(measured: Measured) -> dict[str, Any]:
        # The daily free quota is the estimate command's to read (GET /key): a submit does not wait for it.
        return _priced(measured, catalog, settings, None).to_json()

    with storing() if storing is not None else contextlib.nullcontext() as progress:
        report = await submit_source(
            engine, source, options, progress, on_stored=on_stored, estimate=estimate
        )
    if chain_renamed and not report.reused:
        report = replace(report, renamed={**chain_renamed, **report.renamed})
    if first_window is not None:
        queued = _queue(engine, settings, first_window, report.batch_id, options.simulated, warn)
        if first_window.background:
            task = asyncio.create_task(queued)
            _FEEDING.add(task)
            task.add_done_callback(_FEEDING.discard)
        else:
            await queued
    return Intake(report, options)


async def estimate_source(
    engine: AsyncEngine,
    settings: Settings,
    source: Source,
    options: SubmitOptions,
    *,
    check_models: bool = True,
    upstream: UpstreamCheck | None = None,
    storing: StoringView | None = None,
    warn: Callable[[Setback], None] = _ignore,
) -> Estimate:
    """What `take_in` would store, estimated and stored nowhere: the same checks and errors (ModelRefused,
    SubmitError), the requests' tokens, their cost at the catalogue's prices and the free tier's days."""
    # The catalogue is read for its prices even when ids go unchecked: prices are what an estimate is for.
    options, catalog, _ = await _checked(engine, settings, options, check_models, upstream, warn, read=True)
    with storing() if storing is not None else contextlib.nullcontext() as progress:
        measured = await measure_source(engine, source, options, progress)
    quota = None
    if any(t.model.endswith(":free") for t in measured.tokens):
        quota = await free_quota(settings)
    return _priced(measured, catalog, settings, quota)


def _priced(
    measured: Measured, catalog: Catalog | None, settings: Settings, quota: FreeQuota | None
) -> Estimate:
    return price(
        measured.tokens,
        catalog,
        completion_default=settings.estimate_completion_tokens,
        quota=quota,
        invalid=measured.invalid,
        skipped=[str(e) for e in measured.errors],
    )


async def _checked(
    engine: AsyncEngine,
    settings: Settings,
    options: SubmitOptions,
    check_models: bool,
    upstream: UpstreamCheck | None,
    warn: Callable[[Setback], None],
    read: bool = False,
) -> tuple[SubmitOptions, Catalog | None, dict[str, str]]:
    """The options with simulated decided and the catalogue's ids (`check_models`), and the catalogue (read
    for `check_models` or `read`; None when it was not or could not be), and the chain's names taken as ids;
    ModelRefused for the batch's chain."""
    key = settings.openrouter_api_key.get_secret_value() if settings.openrouter_api_key else None
    if not options.simulated and await (upstream or _asks(settings.openrouter_base_url, key))():
        # Its calls count against no real account, and a real run of the same file is another batch.
        options = replace(options, simulated=True)
    catalog: Catalog | None = None
    if check_models or read:
        try:
            catalog = await load_catalog(engine, settings.openrouter_base_url, key)
        except (httpx.HTTPError, OSError, ValueError) as exc:
            warn(Setback("catalogue", exc))
    if check_models and catalog is not None:
        options = replace(
            options,
            known_models=frozenset(catalog),
            embedding_models=frozenset(m for m, p in catalog.items() if p.embeddings),
            contexts={m: p.context_length for m, p in catalog.items() if p.context_length is not None},
        )
    voting = bool(options.vote)
    if voting:
        options = replace(options, models=_voters(options))
    if options.replace_models and not options.models:
        raise ModelRefused("replacing the lines' models needs a chain to replace them with (--models)")
    renamed: dict[str, str] = {}
    try:
        resolved = resolve_models(options.models, options, renamed)
    except ValueError as exc:
        if voting:
            raise BadInput(str(exc), param="vote", code="invalid_value") from None
        raise ModelRefused(str(exc)) from None
    try:
        options = replace(options, models=resolved)
        if voting:
            # The vote's models as the catalogue names them, kept as the batch's models too (what it calls); two
            # names of one model (`gpt-4o-mini`, `openai/gpt-4o-mini`) are one voter.
            voters = list(dict.fromkeys(options.models))
            options = replace(options, models=voters, vote=_voters(replace(options, models=[], vote=voters)))
    except ValueError as exc:
        raise ModelRefused(str(exc)) from None
    return options, catalog, renamed


def _voters(options: SubmitOptions) -> list[str]:
    """The models of a vote, as given; BadInput for a vote of fewer than two models or beside a chain."""
    if options.models:
        raise BadInput(
            "a vote sends every record to each of its models; a fallback chain (models) has no place beside it",
            param="vote",
            code="invalid_value",
        )
    if len(set(options.vote)) < 2:
        raise BadInput(
            f"a vote needs at least two different models; got {', '.join(options.vote)}",
            param="vote",
            code="invalid_value",
        )
    return options.vote


def _asks(base_url: str, key: str | None) -> UpstreamCheck:
    async def check() -> bool:
        return await upstream_is_simulator(base_url, key)

    return check


async def _queue(
    engine: AsyncEngine,
    settings: Settings,
    window: FirstWindow,
    batch_id: str,
    simulated: bool,
    warn: Callable[[Setback], None],
) -> None:
    """Queue the batch's first requests in its kind's queue, so workers start at once; a failure only delays
    them: Postgres holds the batch, and any worker's feeder queues it once Redis is reachable."""
    queue = kind_queue(settings.queue_name, simulated)
    redis = window.redis
    try:
        conn = await connect(redis, settings.queue_name, patient=False) if isinstance(redis, str) else redis
        try:
            await feed(
                engine, conn, settings.queue_name, settings.feed_window, batch_id=batch_id, queue=queue
            )
        finally:
            if isinstance(redis, str):
                await conn.aclose()
    except (OSError, RedisError) as exc:
        warn(Setback("queue", exc, batch_id))
    except Exception as exc:
        if not window.background:
            raise
        # Queued by a task of its own, whose error nobody awaits: a worker's feeder queues it on its next tick.
        warn(Setback("queue", exc, batch_id))
