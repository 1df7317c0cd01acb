"""The ETA: the observed rate, unless the free tier's daily or per-minute limit is slower, and then why."""

from __future__ import annotations

from datetime import UTC, datetime

from jobs.observation.eta import FreeLimits, RateMeter, estimate, format_duration

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
FREE_TIER = FreeLimits(per_window=20, window_seconds=60, per_day=50, margin=0.05)


def test_500_free_requests_at_50_a_day_take_ten_days_of_quota_and_say_why() -> None:
    eta = estimate(500, 500, None, FREE_TIER, used_today=0, now=NOW)
    assert eta.reason is not None
    assert "50 requests a day" in eta.reason
    assert "500 requests need 10 days of quota" in eta.reason
    assert eta.seconds is not None
    # 50 today, then nine more UTC days: the last 50 go out on the morning of the ninth day after today.
    assert 8 * 86400 < eta.seconds < 9 * 86400


def test_a_spent_day_means_the_first_request_waits_for_midnight() -> None:
    eta = estimate(10, 10, None, FREE_TIER, used_today=50, now=NOW)
    assert eta.seconds is not None
    assert 14 * 3600 < eta.seconds < 14 * 3600 + 60
    assert eta.reason is not None
    assert "none of them today" in eta.reason


def test_within_the_day_the_per_minute_pace_bounds_the_eta() -> None:
    eta = estimate(40, 40, None, FreeLimits(20, 60, 1000, 0.05), now=NOW)
    assert eta.seconds is not None
    assert abs(eta.seconds - 40 / (20 / 60 / 1.05)) < 1
    assert eta.reason == "free models allow about 19 requests a minute"


def test_paid_requests_go_by_the_observed_rate_with_no_reason() -> None:
    eta = estimate(100, 0, 10.0, FREE_TIER, now=NOW)
    assert eta.seconds == 10.0
    assert eta.reason is None
    assert estimate(100, 0, None, FREE_TIER, now=NOW).seconds is None
    assert estimate(0, 0, None, FREE_TIER, now=NOW).seconds == 0.0


def test_the_rate_is_measured_over_the_recent_samples() -> None:
    meter = RateMeter(horizon_seconds=60)
    assert meter.rate is None
    meter.add(0.0, 0)
    meter.add(0.5, 1)
    assert meter.rate is None  # under a second: too little to tell
    meter.add(10.0, 20)
    assert meter.rate == 2.0


def test_durations_read_like_a_person_would_say_them() -> None:
    assert format_duration(45) == "45s"
    assert format_duration(725) == "12m 5s"
    assert format_duration(3 * 3600 + 20 * 60) == "3h 20m"
    assert format_duration(9 * 86400 + 14 * 3600) == "9d 14h"


def test_a_simulators_days_are_said_as_simulated_days_and_end_when_its_day_does() -> None:
    # At speed 60 a simulated day lasts 24 minutes; days run from the epoch.
    limits = FreeLimits(20, 1, 1000, 0.05, day_seconds=1440, simulated=True)
    now = datetime.fromtimestamp(1440 * 1_000_000 + 600, UTC)  # ten minutes into a simulated day
    eta = estimate(3000, 3000, None, limits, used_today=200, now=now)
    assert eta.reason == (
        "the simulator allows 1000 free requests a simulated day (24m 0s of real time): 3000 requests need 4 "
        "simulated days of quota (800 of them now, the rest from its next day, in 14m 0s)"
    )
    assert eta.seconds is not None
    # The rest of this day, two whole simulated days, then the last 200 at the simulated pace: minutes, not days.
    assert 14 * 60 + 2 * 1440 < eta.seconds < 14 * 60 + 2 * 1440 + 60
    paced = estimate(40, 40, None, limits, now=now)
    assert paced.reason == "the simulator allows about 19 free requests per 1 s (its minute)"
