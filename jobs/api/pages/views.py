"""What a page shows, worked out from what was read: progress, rate, the ETA and why, the fleet's state."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

from jobs.api.pages.reads import BatchLine
from jobs.core.constants import PAGE_RATE_MINUTES
from jobs.core.states import BatchStatus, PauseReason
from jobs.observation.eta import FreeLimits, estimate, format_duration
from jobs.observation.gauges import AccountGauges, FleetGauges
from jobs.observation.schedule_view import Competition
from jobs.observation.usage import QuotaSpender
from jobs.scheduling.roster import no_taker, takers

__all__ = ["ACTIONS", "AccountView", "BatchView", "Wait", "account_for", "account_view", "batch_view"]

# A batch's rate is shown once it has run this long: its first requests come in a burst, before any throttle.
PAGE_RATE_MIN_SECONDS = 5.0

_ENDED = (BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.CANCELLED, BatchStatus.EXPIRED)


@dataclass(slots=True, frozen=True)
class Wait:
    """Why a batch's ETA is what it is: `kind` is quota, pace, cool-down, outage, no-worker, priority, share,
    stalled, budget, credits, auth, interrupted or cancelling; `text` says it in a sentence."""

    kind: str
    text: str


@dataclass(slots=True, frozen=True)
class BatchView:
    """One batch as a page shows it."""

    line: BatchLine
    # Requests per second lately (None: too early to say).
    rate: float | None
    eta: str
    wait: Wait | None

    @property
    def ended(self) -> bool:
        """No request of it will move again unless a person retries it."""
        return self.line.status in _ENDED


def account_for(gauges: FleetGauges | None, simulated: bool) -> AccountGauges | None:
    """The account whose throttle a batch's calls go through."""
    if gauges is None:
        return None
    wanted = "simulator" if simulated else "openrouter"
    return next((a for a in gauges.accounts if a.account == wanted), None)


def _bound_for_free(line: BatchLine) -> bool:
    """Whether the batch's requests go to a free model first: by its chain, else by the models that answered
    (a line's own chain is not read: that would scan the batch's requests)."""
    if line.models:
        return line.models[0].endswith(":free")
    return bool(line.free_served)


def _rate(line: BatchLine, now: datetime) -> float | None:
    since = max(line.recent_since, line.started_at or line.created_at)
    seconds = (min(now, line.finished_at or now) - since).total_seconds()
    return line.recent / seconds if seconds >= PAGE_RATE_MIN_SECONDS else None


def _paused(line: BatchLine) -> Wait:
    when = f" It resumes at {line.resume_at:%Y-%m-%d %H:%M} UTC." if line.resume_at else ""
    return Wait(line.pause_reason or "paused", f"{line.pause_message or 'Paused.'}{when}")


def _waiting(line: BatchLine, account: AccountGauges | None) -> Wait | None:
    if line.status == BatchStatus.PAUSED:
        return _paused(line)
    if line.status == BatchStatus.CANCELLING:
        return Wait("cancelling", "cancelling: no new call starts; the calls in flight finish and are kept")
    if account is None:
        return None
    if account.breaker is not None:
        return Wait("outage", f"waiting: {account.breaker.describe()}")
    free_first = _bound_for_free(line)
    cooldown = account.cooldown_free_seconds if free_first else account.cooldown_paid_seconds
    if cooldown > 0:
        kind = "free" if free_first else "paid"
        return Wait(
            "cool-down",
            f"OpenRouter answered 429: {kind} calls wait {format_duration(cooldown)} before the next one",
        )
    return None


def batch_view(
    line: BatchLine,
    gauges: FleetGauges | None,
    now: datetime | None = None,
    running: dict[tuple[bool, str], int] | None = None,
) -> BatchView:
    """Progress, rate and ETA of a batch, with why it waits; free-tier limits from the fleet's gauges, and its
    turn from `running` (every running batch by kind and priority)."""
    now = now or datetime.now(UTC)
    if line.status in _ENDED:
        return BatchView(line, None, "done", None)
    rate = _rate(line, now)
    account = account_for(gauges, line.simulated)
    wait = _waiting(line, account)
    if line.status == BatchStatus.PAUSED and line.resume_at is not None:
        return BatchView(
            line, rate, f"resumes in {format_duration((line.resume_at - now).total_seconds())}", wait
        )
    if line.status in (BatchStatus.PAUSED, BatchStatus.CANCELLING):
        return BatchView(line, rate, "—", wait)
    remaining_free = line.remaining if _bound_for_free(line) else 0
    limits = None
    used = 0
    if account is not None:
        limits = FreeLimits(
            account.free_per_window,
            account.window_seconds,
            account.free_per_day,
            account.margin,
            account.day_seconds,
            account.simulated,
        )
        used = account.free_used_today
    guess = estimate(line.remaining, remaining_free, rate, limits, used, now)
    if guess.seconds is not None and not math.isfinite(guess.seconds):
        # The workers allow no free request a day: a batch bound for free models never ends on its own.
        return BatchView(line, rate, "never", wait or Wait("quota", "the free tier allows 0 requests a day"))
    if wait is None and guess.reason:
        left_today = max(0, limits.per_day - used) if limits else 0
        wait = Wait("quota" if remaining_free > left_today else "pace", guess.reason)
    if (
        wait is None
        and gauges is not None
        and line.status == BatchStatus.IN_PROGRESS
        and not takers(gauges.workers, gauges.queue, line.id, line.simulated)
    ):
        wait = Wait("no-worker", no_taker(line.simulated, "this server's Redis"))
    if wait is None and running is not None and line.status == BatchStatus.IN_PROGRESS:
        competition = Competition.of(running, line.simulated, line.priority)
        turn = competition.says(line.priority, line.counts.get("running", 0))
        if turn is not None:
            wait = Wait("priority" if competition.ahead(line.priority) else "share", turn)
    if wait is None and rate == 0:
        wait = Wait("stalled", f"no request finished in the last {PAGE_RATE_MINUTES} minutes")
    eta = "estimating" if guess.seconds is None else format_duration(guess.seconds)
    return BatchView(line, rate, eta, wait)


@dataclass(slots=True, frozen=True)
class AccountView:
    """One account's free tier, pacing, cool-downs and breaker, as sentences."""

    gauges: AccountGauges
    resets_at: datetime
    resets_in: str
    pace: str
    waits: list[Wait]
    # How long the account's day lasts: a day, or a simulated day of a few minutes.
    day_length: str = "1d"
    # The batches that spent the day's free requests, most first.
    spenders: list[QuotaSpender] = field(default_factory=list)


def account_view(
    account: AccountGauges, now: datetime | None = None, spenders: list[QuotaSpender] | None = None
) -> AccountView:
    """The fleet page's lines for one account."""
    now = now or datetime.now(UTC)
    resets_at = datetime.fromtimestamp(account.day_ends_at, UTC)
    per_minute = account.free_per_window * 60 / account.window_seconds
    pace = (
        f"one free request every {account.pace_seconds:.1f} s across the fleet "
        f"({account.free_per_window} per {account.window_seconds:g} s window, {per_minute:g} a minute, "
        f"with a {account.margin:.0%} margin)"
    )
    waits: list[Wait] = []
    if account.breaker is not None:
        waits.append(Wait("outage", account.breaker.describe()))
    for kind, seconds in (("free", account.cooldown_free_seconds), ("paid", account.cooldown_paid_seconds)):
        if seconds > 0:
            waits.append(
                Wait("cool-down", f"{kind} calls cool down for {format_duration(seconds)} after a 429")
            )
    return AccountView(
        account,
        resets_at,
        format_duration((resets_at - now).total_seconds()),
        pace,
        waits,
        format_duration(account.day_seconds),
        spenders or [],
    )


# Pause reasons a person acts on, for the batch page's hints.
ACTIONS: dict[str, str] = {
    PauseReason.BUDGET: "raise its budget with `orbatch resume BATCH --max-cost USD`",
    PauseReason.CREDITS: "add credits to the OpenRouter account, then resume",
    PauseReason.AUTH: "fix OPENROUTER_API_KEY on the workers, then resume",
    PauseReason.QUOTA: "it resumes by itself when the free tier's day turns",
    PauseReason.INTERRUPTED: "run the same `orbatch run` command again, or resume it for any worker to carry on",
}
