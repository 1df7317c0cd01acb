"""Watching a batch: its counts, rate, quota-aware ETA and spend, as a Rich panel or as plain lines."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from redis.asyncio import Redis
from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn
from rich.text import Text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from jobs.cli.terminal import say
from jobs.core.constants import (
    EXIT_FAILED_REQUESTS,
    EXIT_SKIPPED_LINES,
    EXIT_STOPPED,
    FREE_TIER_DAILY_REQUESTS,
    THROTTLE_KEY,
)
from jobs.core.db import connection_lost
from jobs.core.settings import Settings
from jobs.core.sql import sql
from jobs.core.states import TERMINAL_BATCH_STATUSES, BatchStatus, PauseReason, RequestStatus
from jobs.observation.eta import Estimate, FreeLimits, RateMeter, estimate, format_duration
from jobs.observation.standing import BatchSummary, batch_summary
from jobs.scheduling.fleet import BreakerState, limits_key, read_breaker

__all__ = [
    "BatchView",
    "FleetReading",
    "ProgressView",
    "Snapshot",
    "eta_text",
    "exit_status",
    "finished",
    "needs_action",
    "note_of",
    "read_fleet",
    "snapshot",
    "watch",
    "with_skipped_lines",
]

# How often a watcher (`run`, `status --watch`, `submit --wait`) reads a batch's counts: one cheap query.
WATCH_POLL_SECONDS = 1.0
# How often a watcher counts again which unfinished requests go to a free model (a scan of the batch's
# unfinished requests, for the quota-aware ETA): the count moves slowly and the scan grows with the batch.
REMAINING_FREE_SECONDS = 30.0
# Off a terminal, progress is a plain line this often (and at every change of state): a log, not a redraw.
PLAIN_PROGRESS_SECONDS = 5.0

# How many unfinished requests go to a free model next: a scan of the batch's unfinished requests, so a watcher
# runs it at most every REMAINING_FREE_SECONDS.
_REMAINING_FREE = sql(
    "SELECT count(*) FROM request r JOIN batch b ON b.id = r.batch_id"
    " WHERE r.batch_id = :id AND r.status IN ({R.PENDING}, {R.RUNNING})"
    " AND (coalesce(r.models, b.models))[r.chain_pos + 1] LIKE '%\\:free'"
)


def _done(summary: BatchSummary) -> int:
    counts = summary.counts
    return (
        counts.get(RequestStatus.COMPLETED, 0)
        + counts.get(RequestStatus.FAILED, 0)
        + counts.get(RequestStatus.CANCELLED, 0)
    )


@dataclass(slots=True, frozen=True)
class FleetReading:
    """What the workers share that a watcher shows: their free-tier limits, today's free calls, the breaker."""

    # None: a simulator's workers have not said its limits yet (the settings' defaults would be OpenRouter's).
    limits: FreeLimits | None
    free_used_today: int
    breaker: BreakerState | None = None


@dataclass(slots=True)
class Snapshot:
    """One reading of a batch, with what the ETA needs."""

    summary: BatchSummary
    remaining_free: int
    free_used_today: int
    estimate: Estimate
    rate: float | None
    breaker: BreakerState | None = None

    @property
    def done(self) -> int:
        """Requests finished either way."""
        return _done(self.summary)

    def to_json(self) -> dict[str, Any]:
        """A `--json` progress line: the status object plus rate and ETA."""
        return {
            **self.summary.to_json(),
            "rate_per_second": None if self.rate is None else round(self.rate, 3),
            "eta_seconds": None if self.estimate.seconds is None else round(self.estimate.seconds),
            "eta_reason": self.estimate.reason,
            "waiting": None if self.breaker is None else self.breaker.describe(),
        }


async def read_fleet(
    settings: Settings, redis: Redis | None, namespace: str | None = None, simulated: bool = False
) -> FleetReading:
    """The limits the workers apply (as they published them, else the settings), today's free calls, the breaker.

    `simulated`: the limits are a simulator's, whose days are said as simulated days.
    """
    namespace = namespace or settings.queue_name
    published: dict[bytes, bytes] = {}
    day_count: bytes | None = None
    breaker: BreakerState | None = None
    if redis is not None:
        try:
            published = await redis.hgetall(limits_key(namespace))  # type: ignore[misc]
            day_count = await redis.get(THROTTLE_KEY.format(queue=namespace, name="free-day"))
            breaker = await read_breaker(redis, namespace)
        except Exception:  # an unreachable Redis only makes the ETA use the settings
            published, day_count, breaker = {}, None, None
    per_day = published.get(b"free_per_day")
    day_seconds = float(published.get(b"day_seconds") or settings.free_day_seconds)
    limits = FreeLimits(
        per_window=int(published.get(b"free_per_window") or settings.free_requests_per_minute),
        window_seconds=float(published.get(b"window_seconds") or settings.free_window_seconds),
        per_day=int(per_day) if per_day else settings.free_requests_per_day or FREE_TIER_DAILY_REQUESTS,
        margin=float(published.get(b"margin") or settings.free_rate_margin),
        day_seconds=day_seconds,
        simulated=simulated,
    )
    if simulated and not published:
        return FleetReading(None, 0, breaker)
    used = 0
    if day_count:
        day, _, count = day_count.decode().partition(":")
        if day.isdigit() and int(day) == int(time.time() // day_seconds):
            used = int(count or 0)
    return FleetReading(limits, used, breaker)


class _FreeCounter:
    """The batch's unfinished requests bound for a free model, counted again at most every so often."""

    def __init__(self) -> None:
        self.value = 0
        self.read_at = float("-inf")

    async def read(self, conn: AsyncConnection, batch_id: str, remaining: int) -> int:
        if not remaining:
            self.value = 0
        elif time.monotonic() - self.read_at >= REMAINING_FREE_SECONDS:
            self.read_at = time.monotonic()
            self.value = int((await conn.execute(_REMAINING_FREE, {"id": batch_id})).scalar_one())
        return min(self.value, remaining)


async def snapshot(
    engine: AsyncEngine,
    batch_id: str,
    fleet: FleetReading,
    meter: RateMeter,
    free: _FreeCounter | None = None,
) -> Snapshot:
    """Read the batch once and estimate the time left."""
    free = free or _FreeCounter()
    async with engine.connect() as conn:
        summary = await batch_summary(conn, batch_id)
        counts = summary.counts
        remaining = counts.get(RequestStatus.PENDING, 0) + counts.get(RequestStatus.RUNNING, 0)
        remaining_free = await free.read(conn, batch_id, remaining)
    meter.add(time.monotonic(), _done(summary))
    rate = meter.rate
    used = fleet.free_used_today
    eta = estimate(remaining, remaining_free, rate, fleet.limits, used)
    remote = counts.get(RequestStatus.REMOTE, 0)
    if remote:
        # A remote batch answers all at once, when OpenRouter is done with it: no rate foretells it.
        eta = Estimate(
            None,
            f"{remote} requests in remote batches of OpenRouter's Batch API (answered within minutes to 24 h)"
            + (f"; {eta.reason}" if eta.reason else ""),
        )
    return Snapshot(summary, remaining_free, used, eta, rate, fleet.breaker)


def needs_action(summary: BatchSummary) -> bool:
    """True for a batch that will not move until a person acts: cancelled, or paused on anything but quota."""
    if summary.status == BatchStatus.CANCELLED:
        return True
    return summary.status == BatchStatus.PAUSED and summary.pause_reason != PauseReason.QUOTA


def finished(summary: BatchSummary) -> bool:
    """True once every request of the batch has its final state."""
    return summary.status in TERMINAL_BATCH_STATUSES


def exit_status(summary: BatchSummary) -> int:
    """0 when every request completed, EXIT_FAILED_REQUESTS when some failed, EXIT_STOPPED when it stopped."""
    if needs_action(summary) or summary.status != BatchStatus.COMPLETED:
        return EXIT_STOPPED
    return EXIT_FAILED_REQUESTS if summary.counts.get(RequestStatus.FAILED, 0) else 0


def with_skipped_lines(status: int, summary: BatchSummary, err: Console) -> int:
    """A clean outcome whose file had lines left out (`--skip-invalid`) says so, in words and in its status."""
    if status == 0 and summary.invalid_lines:
        say(
            err,
            f"{summary.invalid_lines} bad lines were skipped (--skip-invalid); exit status {EXIT_SKIPPED_LINES}",
        )
        return EXIT_SKIPPED_LINES
    return status


def note_of(snap: Snapshot) -> str:
    """Why the batch waits, or what bounds its ETA, in a sentence (empty when nothing is worth saying)."""
    summary = snap.summary
    if snap.breaker is not None and not finished(summary):
        return f"waiting: {snap.breaker.describe()}"
    if summary.status == BatchStatus.PAUSED:
        when = ""
        if summary.resume_at is not None:
            left = (summary.resume_at - datetime.now(UTC)).total_seconds()
            when = f" until {summary.resume_at:%Y-%m-%d %H:%M:%S} UTC (in {format_duration(left)})"
        return f"paused ({summary.pause_reason}){when}: {summary.pause_message or ''}"
    return snap.estimate.reason or ""


def eta_text(snap: Snapshot) -> str:
    """The ETA as shown: `done`, `estimating`, or a duration."""
    if finished(snap.summary):
        return "done"
    return "estimating" if snap.estimate.seconds is None else format_duration(snap.estimate.seconds)


class _Panel(Progress):
    """A progress bar with a line under it for why the batch waits or what bounds its ETA."""

    note: str = ""

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        if self.note:
            yield Text(self.note, style="dim")


class BatchView(Protocol):
    """Where a watched batch's snapshots are shown: a terminal's panel, plain lines, a notebook's display."""

    last_summary: BatchSummary | None

    def __enter__(self) -> BatchView: ...

    def __exit__(self, *_: object) -> None: ...

    def show(self, snap: Snapshot, final: bool = False) -> None:
        """Display one snapshot."""
        ...


class ProgressView:
    """Shows snapshots: a live Rich panel on a terminal; else a plain `key=value` line (or JSON) per change."""

    def __init__(self, console: Console, batch_id: str, as_json: bool = False) -> None:
        self.console = console
        self.batch_id = batch_id
        self.as_json = as_json
        self.live = console.is_terminal and not as_json
        self._last_plain = 0.0
        self._last_key: tuple[Any, ...] | None = None
        self._panel = _Panel(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TextColumn("ETA {task.fields[eta]}"),
            TextColumn("{task.fields[cost]}"),
            TextColumn("{task.fields[failed]}"),
            console=console,
            disable=not self.live,
            refresh_per_second=4,
        )
        self._task = self._panel.add_task(batch_id, total=None, rate="", eta="", cost="", failed="")
        # The last summary shown, for a caller that must stop watching before the batch is done.
        self.last_summary: BatchSummary | None = None

    def __enter__(self) -> ProgressView:
        self._panel.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._panel.stop()

    def show(self, snap: Snapshot, final: bool = False) -> None:
        """Display one snapshot (a plain line only when something changed, or at most every few seconds)."""
        summary = snap.summary
        self.last_summary = summary
        failed = summary.counts.get(RequestStatus.FAILED, 0)
        rate = "" if snap.rate is None else f"{snap.rate:.2f} req/s"
        if self.live:
            self._panel.note = note_of(snap)
            self._panel.update(
                self._task,
                total=summary.total,
                completed=snap.done,
                rate=rate,
                eta=eta_text(snap),
                cost=f"${summary.cost:.4f}",
                failed=f"[red]{failed} failed[/]" if failed else "0 failed",
            )
            return
        key = (summary.status, summary.pause_reason, snap.breaker is None)
        now = time.monotonic()
        quiet = key == self._last_key and now - self._last_plain < PLAIN_PROGRESS_SECONDS
        if quiet and not final:
            return
        self._last_key, self._last_plain = key, now
        if self.as_json:
            self.console.out(orjson.dumps(snap.to_json()).decode(), highlight=False)
            return
        eta = "" if snap.estimate.seconds is None else str(round(snap.estimate.seconds))
        fields = [
            ("batch", summary.id),
            ("status", summary.status),
            ("done", snap.done),
            ("total", summary.total),
            ("completed", summary.counts.get(RequestStatus.COMPLETED, 0)),
            ("failed", failed),
            # Requests being called (or waiting for a slot) now.
            ("running", summary.counts.get(RequestStatus.RUNNING, 0)),
            # Requests waiting for, or in, a remote batch of the batch lane.
            ("remote", summary.counts.get(RequestStatus.REMOTE, 0)),
            ("rate", "" if snap.rate is None else f"{snap.rate:.3f}"),
            ("eta_seconds", "0" if finished(summary) else eta),
            ("cost", f"{summary.cost:.6f}"),
        ]
        note = note_of(snap)
        line = " ".join(f"{k}={v}" for k, v in fields) + (
            f" note={orjson.dumps(note).decode()}" if note else ""
        )
        self.console.out(line, highlight=False)


async def watch(
    engine: AsyncEngine,
    batch_id: str,
    fleet: Callable[[], Awaitable[FleetReading]],
    view: BatchView,
    stop: asyncio.Event | None = None,
    poll_seconds: float = WATCH_POLL_SECONDS,
    patient: bool = False,
) -> BatchSummary:
    """Show the batch until it finishes, stops for a person, or `stop` is set; returns its last summary.

    `patient`: a database that does not answer skips a reading instead of ending the watch (a run's own
    service watch decides when a silence is too long).
    """
    meter = RateMeter()
    free = _FreeCounter()
    while True:
        try:
            snap = await snapshot(engine, batch_id, await fleet(), meter, free)
        except (OSError, DBAPIError) as exc:
            if not patient or not connection_lost(exc):
                raise
            if stop is not None and stop.is_set() and view.last_summary is not None:
                return view.last_summary
            await _pause(stop, poll_seconds)
            continue
        done = finished(snap.summary) or needs_action(snap.summary) or (stop is not None and stop.is_set())
        view.show(snap, final=done)
        if done:
            return snap.summary
        await _pause(stop, poll_seconds)


async def _pause(stop: asyncio.Event | None, seconds: float) -> None:
    """Sleep between readings, or until `stop` is set."""
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
