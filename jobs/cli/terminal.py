"""What the CLI prints: messages, tables of batches and usage, with every piece of user text shown as text.

Batch names, file names, pause messages and upstream errors are user or upstream text: Rich would read
`[/x]` in them as markup (and crash on it), so they only ever reach a console as `rich.text.Text`.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from jobs.core.states import RequestStatus
from jobs.observation.eta import format_duration
from jobs.observation.standing import BatchSummary
from jobs.observation.usage import UsageLine, UsageReport
from jobs.operations.scores import Score
from jobs.scheduling.roster import Heartbeat
from jobs.submission.estimate import CostRange, Estimate, LaneCost

__all__ = [
    "batches_table",
    "err",
    "estimate_notes",
    "estimate_table",
    "estimated_table",
    "keys_table",
    "out",
    "say",
    "say_error",
    "say_warning",
    "score_tables",
    "summary_table",
    "usage_table",
    "workers_table",
]

# soft_wrap: messages stay one line each when piped, whatever the width; piped tables get room for ids.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)


def say(console: Console, message: str, style: str | None = None) -> None:
    """Print a message as plain text (never read as markup)."""
    console.print(Text(message, style=style or ""), highlight=False)


def say_warning(console: Console, message: str) -> None:
    """`warning: MESSAGE`, the prefix in yellow."""
    console.print(Text.assemble(("warning: ", "bold yellow"), message), highlight=False)


def say_error(console: Console, message: str) -> None:
    """`error: MESSAGE`, the prefix in red."""
    console.print(Text.assemble(("error: ", "bold red"), message), highlight=False)


def summary_table(summary: BatchSummary, waiting: str | None = None) -> Table:
    """One batch: state, what it waits for, pause, models, counts, attempts, tokens, cost."""
    counts = summary.counts
    title = f"batch {summary.id}" + (f" ({summary.name})" if summary.name else "")
    table = Table(title=Text(title), show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("status", Text(summary.status))
    if waiting:
        table.add_row("waiting", Text(waiting))
    if summary.pause_reason:
        when = f" until {summary.resume_at:%Y-%m-%d %H:%M:%S} UTC" if summary.resume_at else ""
        table.add_row("paused", Text(f"{summary.pause_reason}{when}: {summary.pause_message or ''}"))
    table.add_row("models", Text(", ".join(summary.models) or "(per line)"))
    table.add_row(
        "requests",
        f"{summary.total} total · {counts.get(RequestStatus.COMPLETED, 0)} completed · {counts.get(RequestStatus.FAILED, 0)} failed · "
        f"{counts.get(RequestStatus.PENDING, 0)} pending · {counts.get(RequestStatus.RUNNING, 0)} running"
        + (f" · {counts[RequestStatus.REMOTE]} in remote batches" if counts.get(RequestStatus.REMOTE) else "")
        + (f" · {counts['cancelled']} cancelled" if counts.get(RequestStatus.CANCELLED) else ""),
    )
    if summary.lane != "live" or summary.lane_note:
        table.add_row("lane", Text(summary.lane + (f": {summary.lane_note}" if summary.lane_note else "")))
    table.add_row("attempts", str(summary.attempts))
    table.add_row("tokens", f"{summary.prompt_tokens} prompt · {summary.completion_tokens} completion")
    table.add_row("cost", f"${summary.cost:.6f}")
    return table


def batches_table(summaries: list[BatchSummary]) -> Table:
    """The latest batches, one row each."""
    table = Table("id", "name", "status", "total", "completed", "failed", "cost")
    for s in summaries:
        table.add_row(
            s.id,
            Text(s.name or ""),
            Text(s.status),
            str(s.total),
            str(s.counts.get(RequestStatus.COMPLETED, 0)),
            str(s.counts.get(RequestStatus.FAILED, 0)),
            f"${s.cost:.6f}",
        )
    return table


def _usage_row(
    table: Table,
    batch_id: str,
    model: str,
    line: UsageLine,
    style: str | None = None,
    lane: str = "",
    skipped: bool = False,
) -> None:
    table.add_row(
        batch_id,
        Text(model),
        lane,
        str(line.requests),
        str(line.calls),
        *((str(line.skipped_context),) if skipped else ()),
        str(line.prompt_tokens),
        str(line.completion_tokens),
        str(line.reasoning_tokens),
        str(line.cached_tokens),
        f"${line.cost:.6f}" + ("*" if line.cost_estimated else ""),
        style=style,
    )


def usage_table(report: UsageReport) -> Table:
    """Requests, calls, tokens and cost by batch, by the model that served and by lane (`live` calls, `batch`
    lines of OpenRouter's Batch API at its batch price), with totals."""
    # The models passed over without a call (their context could not hold a request), when there were any.
    skipped = report.total.skipped_context > 0
    table = Table(
        "batch",
        "model served",
        "lane",
        "requests",
        "calls",
        *(("skipped (context)",) if skipped else ()),
        "prompt",
        "completion",
        "reasoning",
        "cached",
        "cost",
    )
    for batch_id, rows in report.rows.items():
        for (model, lane), line in rows.items():
            _usage_row(table, batch_id, model or "(no answer)", line, lane=lane, skipped=skipped)
        if len(rows) > 1:
            _usage_row(table, batch_id, "all", report.batches[batch_id], style="bold", skipped=skipped)
    if len(report.batches) > 1:
        _usage_row(table, "all", "", report.total, style="bold", skipped=skipped)
    return table


def usd(amount: Decimal) -> str:
    """`$0.012345`: dollars to the millionth, as every cost is shown; an amount under a millionth but above
    zero (an embeddings batch's) to its first two significant digits, `$0.00000026`, not as nothing."""
    if 0 < abs(amount) < Decimal("0.0000005"):
        return "$" + format(amount.quantize(Decimal(1).scaleb(amount.adjusted() - 1)), "f")
    return f"${amount:,.6f}"


def cost_range(cost: CostRange | LaneCost | None, missing: str = "not available") -> str:
    """`$0.010000 to $0.090000`, one amount when both ends are the same, or `missing`."""
    if cost is None:
        return missing
    span = cost.cost if isinstance(cost, LaneCost) else cost
    return usd(span.low) if span.low == span.high else f"{usd(span.low)} to {usd(span.high)}"


def estimate_table(estimate: Estimate, title: str) -> Table:
    """Requests, prompt and completion tokens and the cost range by lane, a row per model and one for all."""
    table = Table(title=Text(title))
    table.add_column("model")
    for numbers in ("requests", "prompt tokens", "completion (at most)", "live", "batch API"):
        table.add_column(numbers, justify="right")
    table.add_column("counted with")
    for m in estimate.models:
        table.add_row(
            Text(m.model + (" (free)" if m.free else "")),
            f"{m.requests:,}",
            f"{m.prompt_tokens:,}",
            f"{m.completion_tokens:,}" + ("*" if m.completion_assumed else ""),
            cost_range(m.live, "unknown price") if not m.free else usd(Decimal(0)),
            cost_range(m.batch),
            Text(m.tokenizer),
        )
    if len(estimate.models) > 1:
        table.add_row(
            "all",
            f"{estimate.requests:,}",
            f"{estimate.prompt_tokens:,}",
            f"{estimate.completion_tokens:,}" + ("*" if estimate.completion_assumed else ""),
            cost_range(estimate.live, "unknown"),
            cost_range(estimate.batch),
            "",
            style="bold",
        )
    return table


def estimated_table(batch_id: str, estimate: Estimate, actual: UsageLine) -> Table:
    """A batch's estimate beside what it took: requests, prompt and completion tokens, cost."""
    table = Table("", "estimated", "actual", title=Text(f"{batch_id}: estimated when submitted, and actual"))
    live = estimate.live
    verdict = ""
    if live is not None:
        verdict = (
            " (within the estimate)"
            if live.contains(actual.cost)
            else (" (below the estimate)" if actual.cost < live.low else " (above the estimate)")
        )
    table.add_row(
        "requests", f"{estimate.requests:,}", f"{actual.requests:,} answered · {actual.calls:,} calls"
    )
    table.add_row("prompt tokens", f"{estimate.prompt_tokens:,}", f"{actual.prompt_tokens:,}")
    table.add_row(
        "completion tokens", f"at most {estimate.completion_tokens:,}", f"{actual.completion_tokens:,}"
    )
    table.add_row("cost", cost_range(live, "unknown"), usd(actual.cost) + verdict)
    return table


def estimate_notes(estimate: Estimate) -> list[str]:
    """What the numbers of `estimate_table` mean and assume, a sentence each."""
    notes = []
    if estimate.completion_assumed:
        notes.append(
            f"* {estimate.completion_assumed:,} requests set no max_tokens: each is allowed "
            f"{estimate.completion_default:,} completion tokens (ORBATCH_ESTIMATE_COMPLETION_TOKENS); "
            "--max-tokens bounds them for real"
        )
    lanes = "live at each model's own price, batch API at its :batch variant's (OpenRouter's Batch API, about half)"
    if any(m.completion_tokens for m in estimate.models):
        notes.append(
            "cost in USD: from the prompt alone (answers of no length) to the prompt and every completion bound "
            f"spent; {lanes}"
        )
    else:
        # Embeddings requests: the input is all there is to pay for, so the range is one figure.
        notes.append(f"cost in USD: of the input alone (an embeddings request completes nothing); {lanes}")
    if not estimate.exact:
        notes.append(
            "approximate: orbatch has OpenAI's tokenizers only; other models' prompts are counted as a token per "
            "3 bytes of UTF-8 text, which errs high for most text"
        )
    if not estimate.priced:
        notes.append("no prices: OpenRouter's model list (GET /models), which has them, could not be read")
    missing = [m.model for m in estimate.models if m.batch is None and not m.free]
    if missing and estimate.priced:
        notes.append(
            "batch API not available for " + ", ".join(missing) + ": the catalogue lists no :batch variant"
        )
    if estimate.free_tier.requests:
        notes.append(estimate.free_tier.describe())
    return notes


def workers_table(beats: list[Heartbeat], now: datetime | None = None) -> Table:
    """The live workers, one row each: who, what it runs, its load now, how long up and since it last worked."""
    now = now or datetime.now(UTC)
    table = Table(
        "worker", "version", "queue", "calls", "holding", "answered", "up", "last activity", "state"
    )
    for beat in beats:
        idle = (
            "never"
            if beat.last_activity is None
            else format_duration((now - beat.last_activity).total_seconds())
        )
        state = "stopping" if beat.stopping else ("working" if beat.tasks else "idle")
        table.add_row(
            # Host names and queue names come from other machines' configuration: shown as text, never markup.
            Text(f"{beat.host}:{beat.pid}"),
            Text(beat.version + (" (simulator)" if beat.simulated else "")),
            Text(beat.queue),
            f"{beat.in_flight}/{beat.concurrency}",
            str(beat.tasks),
            str(beat.answered),
            format_duration((now - beat.started_at).total_seconds()),
            idle if beat.last_activity is None else f"{idle} ago",
            state,
        )
    return table


def keys_table(rows: list[dict[str, Any]]) -> Table:
    """The API's keys: owner, the key's first characters, rate limit, made and revoked."""
    table = Table("owner", "key", "rate limit", "created", "revoked")
    for row in rows:
        table.add_row(
            Text(row["name"]),
            Text(row["hint"]),
            Text("server default" if row["rate_per_minute"] is None else f"{row['rate_per_minute']}/min"),
            Text(row["created_at"][:19]),
            Text("" if row["revoked_at"] is None else row["revoked_at"][:19], style="red"),
        )
    return table


def score_tables(result: Score) -> list[Table]:
    """The score as tables: per class, the confusion matrix, and a vote's models."""
    head = Table(
        title=Text(
            f"{result.batch_id}: {result.field!r} against {result.gold!r}, {result.scored} records, "
            f"accuracy {result.accuracy:.1%}"
        )
    )
    for column in ("label", "precision", "recall", "F1", "support"):
        head.add_column(column, justify="left" if column == "label" else "right")
    for c in result.classes:
        head.add_row(Text(c.label), f"{c.precision:.3f}", f"{c.recall:.3f}", f"{c.f1:.3f}", str(c.support))
    labels = result.columns
    matrix = Table(title="confusion matrix (rows: gold, columns: answered)")
    matrix.add_column("gold")
    for label in labels:
        matrix.add_column(Text(label), justify="right")
    for gold, row in result.confusion.items():
        matrix.add_row(Text(gold), *(str(row.get(label, 0)) for label in labels))
    tables = [head, matrix]
    if result.models is not None:
        kappa = "undefined (one label only)" if result.kappa is None else f"{result.kappa:.3f}"
        models = Table(
            title=Text(
                f"models: {result.kappa_kind} kappa {kappa} over {result.kappa_records} records all answered"
            )
        )
        models.add_column("model")
        models.add_column("accuracy", justify="right")
        for model, accuracy in result.models.items():
            models.add_row(Text(model), f"{accuracy:.1%}")
        tables.append(models)
    return tables
