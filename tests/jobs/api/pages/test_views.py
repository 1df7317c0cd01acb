"""What a page works out before it draws: the ETA and why a batch waits, and the charts' layout at the edges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from jobs.api.pages.charts import finished_chart, model_chart
from jobs.api.pages.reads import BatchLine, MinuteLine
from jobs.api.pages.views import batch_view
from jobs.core.constants import CHART_SPANS
from jobs.observation.gauges import AccountGauges, FleetGauges
from jobs.scheduling.fleet import BreakerState
from jobs.scheduling.roster import Heartbeat

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def line(
    status: str = "in_progress", models: tuple[str, ...] = ("a/model:free",), **changes: object
) -> BatchLine:
    values: dict[str, object] = {
        "id": "batch_1",
        "name": "n",
        "status": status,
        "pause_reason": None,
        "pause_message": None,
        "resume_at": None,
        "models": list(models),
        "simulated": False,
        "max_cost": None,
        "created_at": NOW - timedelta(hours=1),
        "started_at": NOW - timedelta(hours=1),
        "finished_at": None,
        "total": 100,
        "counts": {"pending": 60, "running": 0, "completed": 40, "failed": 0, "cancelled": 0},
        "calls": 40,
        "cost": Decimal(0),
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "recent": 10,
        "recent_since": NOW - timedelta(minutes=5),
    }
    values.update(changes)
    return BatchLine(**values)  # type: ignore[arg-type]


QUEUE = "orbatch:queue"


def worker(queue: str | None = None, simulated: bool = False) -> Heartbeat:
    """A live worker's heartbeat: a fleet worker takes jobs from its upstream kind's queue."""
    queue = queue or (f"{QUEUE}:sim" if simulated else QUEUE)
    return Heartbeat(
        id="h:1:x",
        host="h",
        pid=1,
        version="0",
        queue=queue,
        concurrency=16,
        in_flight=0,
        tasks=0,
        answered=0,
        started_at=NOW,
        last_activity=None,
        beat_at=NOW,
        simulated=simulated,
    )


def fleet(workers: list[Heartbeat] | None = None, **changes: object) -> FleetGauges:
    """The fleet's gauges: OpenRouter's account and, unless told otherwise, one live worker in front of it."""
    account = AccountGauges(
        **{"account": "openrouter", "free_per_day": 1000, "free_used_today": 0, "day_ends_at": 0.0, **changes}
    )  # type: ignore[arg-type]
    return FleetGauges(accounts=[account], workers=[worker()] if workers is None else workers, queue=QUEUE)


def test_a_free_batch_on_an_account_allowed_no_free_request_never_ends_and_says_why() -> None:
    view = batch_view(line(), fleet(free_per_day=0), NOW)
    assert view.eta == "never"
    assert view.wait is not None
    assert view.wait.kind == "quota"


def test_more_free_requests_than_the_day_allows_is_a_quota_wait() -> None:
    view = batch_view(line(), fleet(free_per_day=50, free_used_today=20), NOW)
    assert view.wait is not None
    assert view.wait.kind == "quota"
    assert "50 requests a day" in view.wait.text


def test_an_open_breaker_and_a_cool_down_say_what_the_batch_waits_for() -> None:
    breaker = BreakerState(since=NOW, probes=2, next_probe=NOW, probing=False, reason="connection refused")
    outage = batch_view(line(), fleet(breaker=breaker), NOW)
    assert outage.wait is not None
    assert outage.wait.kind == "outage"
    assert "connection refused" in outage.wait.text
    cooling = batch_view(line(), fleet(cooldown_free_seconds=42.0), NOW)
    assert cooling.wait is not None
    assert cooling.wait.kind == "cool-down"


def test_a_paused_batch_waits_for_its_reason_and_an_ended_one_is_done() -> None:
    paused = batch_view(line("paused", pause_reason="budget", pause_message="spent 1 of 1 USD"), fleet(), NOW)
    assert paused.wait is not None
    assert (paused.wait.kind, paused.eta) == ("budget", "—")
    assert batch_view(line("completed"), fleet(), NOW).eta == "done"


def test_a_paid_batch_that_finished_nothing_lately_has_stalled() -> None:
    view = batch_view(line(models=("a/paid",), recent=0), fleet(), NOW)
    assert view.wait is not None
    assert view.wait.kind == "stalled"


def test_a_batch_no_live_worker_can_take_says_so_and_what_would_take_it() -> None:
    alone = batch_view(line(models=("a/paid",), recent=0), fleet(workers=[]), NOW)
    assert alone.wait is not None
    assert alone.wait.kind == "no-worker"
    assert "`orbatch worker`" in alone.wait.text
    # Workers of the other kind, or another run's, cannot take it either.
    others = [worker(simulated=True), worker(queue=f"{QUEUE}:run:batch_other")]
    simulated_only = batch_view(line(models=("a/paid",)), fleet(workers=others), NOW)
    assert simulated_only.wait is not None
    assert simulated_only.wait.kind == "no-worker"
    # Its own run's worker takes it; so would a fleet worker of its kind.
    own_run = batch_view(line(models=("a/paid",)), fleet(workers=[worker(queue=f"{QUEUE}:run:batch_1")]), NOW)
    assert own_run.wait is None
    simulated = batch_view(line(models=("a/paid",), simulated=True), fleet(workers=others), NOW)
    assert simulated.wait is None
    assert (
        "in front of a simulator"
        in batch_view(line(models=("a/paid",), simulated=True), fleet(workers=[]), NOW).wait.text
    )  # type: ignore[union-attr]


def _minutes(start: datetime, count: int, step: timedelta, model: str = "m") -> list[MinuteLine]:
    return [
        MinuteLine(start + i * step, model, 2, 1 if i % 3 == 0 else 0, Decimal("0.001")) for i in range(count)
    ]


def test_charts_of_a_batch_with_no_history_are_empty() -> None:
    assert finished_chart([], timedelta(minutes=1), NOW).bars == []
    assert model_chart([], timedelta(minutes=1), NOW).series == []


def test_one_span_draws_one_bar_and_a_line_from_nothing() -> None:
    minutes = _minutes(NOW, 1, timedelta(minutes=1))
    bars = finished_chart(minutes, timedelta(minutes=1), NOW)
    assert len(bars.bars) == 1
    assert "2 answered, 1 failed" in bars.bars[0].title
    lines = model_chart(minutes, timedelta(minutes=1), NOW)
    assert len(lines.series[0].points.split()) == 2
    assert lines.title.startswith("Spend by model")


def test_a_batch_that_ended_long_ago_is_drawn_over_its_life_not_until_now() -> None:
    start = NOW - timedelta(days=14)
    minutes = _minutes(start, 10, timedelta(minutes=1))
    end = start + timedelta(minutes=10)
    chart = finished_chart(minutes, timedelta(minutes=1), end)
    assert len(chart.bars) == 10
    # Even asked to run to now, a chart never has more spans than its batch's life was cut into.
    assert len(finished_chart(minutes, timedelta(minutes=1), NOW).bars) <= CHART_SPANS + 1


def test_a_batch_that_spent_nothing_charts_answers_by_model() -> None:
    minutes = [MinuteLine(NOW, model, 3, 0, Decimal(0)) for model in ("a:free", "b:free")]
    chart = model_chart(minutes, timedelta(minutes=1), NOW)
    assert chart.title.startswith("Answers by model")
    assert [s.label for s in chart.series] == ["a:free", "b:free"]
    assert {s.total for s in chart.series} == {"3"}


def test_a_running_batch_says_whose_turn_it_is_and_the_slots_it_holds() -> None:
    counts = {"pending": 50, "running": 3, "completed": 40, "failed": 0, "cancelled": 0}
    behind = batch_view(
        line(models=("a/paid",), priority="background", counts=counts),
        fleet(),
        NOW,
        {(False, "background"): 1, (False, "normal"): 2, (True, "urgent"): 4},
    )
    assert behind.wait is not None
    assert behind.wait.kind == "priority"
    # Simulated batches are another fleet's business: only the two normal real ones go first.
    assert behind.wait.text == (
        "priority background: 2 running batches of a higher priority go first; it holds 3 worker slots"
    )
    sharing = batch_view(
        line(models=("a/paid",), counts=counts),
        fleet(),
        NOW,
        {(False, "normal"): 3, (False, "background"): 5},
    )
    assert sharing.wait is not None
    assert sharing.wait.kind == "share"
    assert sharing.wait.text.startswith("shares the fleet fairly with 2 other normal batches")
    alone = batch_view(line(models=("a/paid",), counts=counts), fleet(), NOW, {(False, "normal"): 1})
    assert alone.wait is None
