"""Inline SVG charts of a batch's life, laid out here and drawn by the templates: no script, no library."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from jobs.api.pages.reads import MinuteLine
from jobs.core.constants import CHART_SPANS

__all__ = ["Bar", "BarChart", "LineChart", "Series", "finished_chart", "model_chart"]

WIDTH = 640
HEIGHT = 180
# Room for the axis labels on the left and below.
_LEFT, _BOTTOM, _TOP = 56, 22, 8
# Distinct at a glance and on a colour-blind reader's screen (the Okabe-Ito palette); a ninth model takes the
# first colour again, and the legend still names each line.
_COLOURS = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000")


@dataclass(slots=True, frozen=True)
class Bar:
    """One span's bar: answered below, failed stacked on it."""

    x: float
    width: float
    answered_y: float
    answered_height: float
    failed_y: float
    failed_height: float
    title: str


@dataclass(slots=True)
class BarChart:
    """Requests finished per span of the batch's life."""

    bars: list[Bar] = field(default_factory=list)
    y_max: str = "0"
    start: str = ""
    end: str = ""
    span: str = ""


@dataclass(slots=True, frozen=True)
class Series:
    """One model's line and its legend."""

    label: str
    colour: str
    points: str
    total: str


@dataclass(slots=True)
class LineChart:
    """A running total per model over the batch's life: spend, or answers when nothing cost anything."""

    title: str
    series: list[Series] = field(default_factory=list)
    y_max: str = "0"
    start: str = ""
    end: str = ""


_INSTANT = timedelta(microseconds=1)


def _usd(amount: Decimal) -> str:
    # Free and cheap models cost fractions of a cent: their digits show.
    return f"${amount:,.4f}" if amount >= Decimal("0.01") else f"${amount:.6f}"


def _span_words(span: timedelta) -> str:
    minutes = int(span.total_seconds() // 60)
    if minutes == 1:
        return "minute"
    return f"{minutes} minutes" if minutes < 120 or minutes % 60 else f"{minutes // 60} hours"


def _spans(minutes: list[MinuteLine], bucket: timedelta, end: datetime) -> list[datetime]:
    """Every span from the first to the batch's end (now, while it runs), empty ones too, so a stall shows as a
    gap; the spans were sized so that its life takes at most CHART_SPANS of them."""
    if not minutes:
        return []
    first = minutes[0].at
    # The span that holds the batch's last moment (one ending on a span's edge ended in the span before).
    last = max(minutes[-1].at, first + bucket * max(0, int((end - first - _INSTANT) / bucket)))
    count = min(int((last - first) / bucket) + 1, CHART_SPANS + 1)
    return [first + i * bucket for i in range(count)]


def finished_chart(minutes: list[MinuteLine], bucket: timedelta, end: datetime) -> BarChart:
    """Bars of requests answered and failed in each span."""
    answered: dict[datetime, int] = {}
    failed: dict[datetime, int] = {}
    for line in minutes:
        answered[line.at] = answered.get(line.at, 0) + line.answers
        failed[line.at] = failed.get(line.at, 0) + line.failed
    spans = _spans(minutes, bucket, end)
    chart = BarChart(span=_span_words(bucket))
    if not spans:
        return chart
    peak = max(answered.get(s, 0) + failed.get(s, 0) for s in spans) or 1
    plot_w, plot_h = WIDTH - _LEFT, HEIGHT - _BOTTOM - _TOP
    step = plot_w / len(spans)
    for i, span in enumerate(spans):
        ok, bad = answered.get(span, 0), failed.get(span, 0)
        ok_h, bad_h = plot_h * ok / peak, plot_h * bad / peak
        base = _TOP + plot_h
        chart.bars.append(
            Bar(
                x=round(_LEFT + i * step + step * 0.1, 2),
                width=round(max(step * 0.8, 0.5), 2),
                answered_y=round(base - ok_h, 2),
                answered_height=round(ok_h, 2),
                failed_y=round(base - ok_h - bad_h, 2),
                failed_height=round(bad_h, 2),
                title=f"{span:%Y-%m-%d %H:%M} UTC: {ok} answered, {bad} failed",
            )
        )
    chart.y_max, chart.start, chart.end = f"{peak:,}", f"{spans[0]:%H:%M}", f"{spans[-1] + bucket:%H:%M} UTC"
    return chart


def model_chart(minutes: list[MinuteLine], bucket: timedelta, end: datetime) -> LineChart:
    """Each model's spend so far at every span; its answers so far when the batch has spent nothing."""
    served = [line for line in minutes if line.model]
    by_cost = any(line.cost for line in served)
    chart = LineChart(
        "Spend by model (USD, running total)" if by_cost else "Answers by model (running total)"
    )
    spans = _spans(minutes, bucket, end)
    if not spans or not served:
        return chart
    per_model: dict[str, dict[datetime, Decimal]] = {}
    for line in served:
        column = per_model.setdefault(line.model, {})
        column[line.at] = column.get(line.at, Decimal(0)) + (line.cost if by_cost else Decimal(line.answers))
    totals = {model: sum(column.values(), Decimal(0)) for model, column in per_model.items()}
    peak = max(totals.values()) or Decimal(1)
    plot_w, plot_h = WIDTH - _LEFT, HEIGHT - _BOTTOM - _TOP
    # Each line starts at nothing when the batch started and has a point at the end of every span.
    step = plot_w / len(spans)
    ranked = sorted(per_model, key=lambda m: (-totals[m], m))
    for index, model in enumerate(ranked):
        running, points = Decimal(0), [f"{_LEFT},{_TOP + plot_h}"]
        for i, span in enumerate(spans):
            running += per_model[model].get(span, Decimal(0))
            y = _TOP + plot_h - float(running / peak) * plot_h
            points.append(f"{_LEFT + (i + 1) * step:.1f},{y:.1f}")
        total = _usd(totals[model]) if by_cost else f"{int(totals[model]):,}"
        chart.series.append(Series(model, _COLOURS[index % len(_COLOURS)], " ".join(points), total))
    chart.y_max = _usd(peak) if by_cost else f"{int(peak):,}"
    chart.start, chart.end = f"{spans[0]:%H:%M}", f"{spans[-1] + bucket:%H:%M} UTC"
    return chart
