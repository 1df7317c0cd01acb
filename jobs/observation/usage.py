"""Usage from the attempt rows: requests, calls, tokens and cost by batch and by the model that served, beside
the estimate each batch was submitted with."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from jobs.core.sql import sql
from jobs.observation.standing import BatchNotFound
from jobs.submission.estimate import Estimate

__all__ = ["QuotaSpender", "UsageLine", "UsageReport", "quota_spenders", "usage_report"]

# From the tallies the triggers keep: a few rows per batch, model and lane, whatever the batch's size.
_BY_MODEL = text(
    """
    SELECT batch_id, model, lane, sum(answers) AS requests, sum(calls) AS calls, sum(reused) AS reused,
           sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,
           sum(reasoning_tokens) AS reasoning_tokens, sum(cached_tokens) AS cached_tokens,
           sum(cost) AS cost, sum(estimated) > 0 AS cost_estimated
    FROM batch_model_tally
    WHERE CAST(:batch_id AS text) IS NULL OR batch_id = :batch_id
    GROUP BY batch_id, model, lane
    HAVING sum(answers) <> 0 OR sum(calls) <> 0 OR sum(reused) <> 0
    ORDER BY batch_id, model, lane
    """
)

# The models passed over without a call because their context could not hold the request, per batch and model:
# on the partial index of the attempts that skipped any, which are few.
_SKIPPED = text(
    """
    SELECT batch_id, skipped AS model, count(*) AS skipped
    FROM attempt, unnest(models_skipped) AS skipped
    WHERE models_skipped IS NOT NULL AND (CAST(:batch_id AS text) IS NULL OR batch_id = :batch_id)
    GROUP BY batch_id, skipped
    ORDER BY batch_id, skipped
    """
)

# Answers that needed a correction: completed requests with at least one reply that failed its schema before
# the one that was kept. On the partial index of `invalid_output` attempts (revision 0017), so its cost is those
# attempts', not the table's.
_CORRECTED = sql(
    """
    SELECT a.batch_id, count(DISTINCT a.request_id) AS corrected
    FROM attempt a JOIN request r ON r.id = a.request_id
    WHERE a.error_code = 'invalid_output' AND r.status = {R.COMPLETED}
      AND (CAST(:batch_id AS text) IS NULL OR a.batch_id = :batch_id)
    GROUP BY a.batch_id
    """
)

_ESTIMATES = text("SELECT id, estimate FROM batch WHERE id = ANY(:ids) AND estimate IS NOT NULL")

_COUNTERS = (
    "requests",
    "calls",
    "reused",
    "prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "cached_tokens",
    "skipped_context",
)


@dataclass(slots=True)
class UsageLine:
    """One group's totals; `requests` counts the requests it answered, `calls` every upstream call."""

    requests: int = 0
    calls: int = 0
    # Requests answered from an identical request's stored result (`--dedupe`), with no call.
    reused: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    cost: Decimal = Decimal(0)
    cost_estimated: bool = False
    # Times the model was passed over without a call: its context could not hold the request's prompt and
    # max_tokens (a `skipped (context)` count).
    skipped_context: int = 0

    def add(self, other: UsageLine) -> None:
        """Fold another group's totals into this one."""
        for name in _COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.cost += other.cost
        self.cost_estimated = self.cost_estimated or other.cost_estimated

    def to_json(self) -> dict[str, Any]:
        """Plain JSON, with the cost as a decimal string."""
        data = asdict(self)
        data["cost"] = f"{self.cost:f}"
        return data


@dataclass(slots=True)
class UsageReport:
    """Totals overall, per batch, per batch and model (the model that served; "" for calls with no answer), and
    per batch, model and lane (`live` calls, or `batch`: lines of OpenRouter's Batch API, at its batch price)."""

    total: UsageLine = field(default_factory=UsageLine)
    batches: dict[str, UsageLine] = field(default_factory=dict)
    models: dict[str, dict[str, UsageLine]] = field(default_factory=dict)
    # What each batch was estimated to take when it was submitted (none for batches stored before revision 0013).
    estimates: dict[str, Estimate] = field(default_factory=dict)
    lanes: dict[str, dict[str, UsageLine]] = field(default_factory=dict)
    rows: dict[str, dict[tuple[str, str], UsageLine]] = field(default_factory=dict)
    # Answers that came after at least one reply failing its JSON schema (a corrected answer), by batch.
    corrected: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The `usage --json` object: each batch's `estimate` is `orbatch estimate --json`'s, or null."""
        return {
            "total": {**self.total.to_json(), "corrected": sum(self.corrected.values())},
            "batches": [
                {
                    "id": batch_id,
                    **line.to_json(),
                    "corrected": self.corrected.get(batch_id, 0),
                    "models": {m: u.to_json() for m, u in self.models[batch_id].items()},
                    "estimate": None
                    if batch_id not in self.estimates
                    else self.estimates[batch_id].to_json(),
                    "lanes": {lane: u.to_json() for lane, u in self.lanes[batch_id].items()},
                    "rows": [
                        {"model": model, "lane": lane, **u.to_json()}
                        for (model, lane), u in self.rows[batch_id].items()
                    ],
                }
                for batch_id, line in self.batches.items()
            ],
        }


async def usage_report(engine: AsyncEngine, batch_id: str | None = None) -> UsageReport:
    """Sum the attempt rows of one batch, or of every batch."""
    report = UsageReport()
    async with engine.connect() as conn:
        if batch_id is not None:
            exists = (await conn.execute(text("SELECT 1 FROM batch WHERE id = :b"), {"b": batch_id})).first()
            if exists is None:
                raise BatchNotFound(batch_id)
        for row in await conn.execute(_BY_MODEL, {"batch_id": batch_id}):
            line = UsageLine(
                requests=int(row.requests),
                calls=int(row.calls),
                reused=int(row.reused),
                prompt_tokens=int(row.prompt_tokens),
                completion_tokens=int(row.completion_tokens),
                reasoning_tokens=int(row.reasoning_tokens),
                cached_tokens=int(row.cached_tokens),
                cost=Decimal(row.cost),
                cost_estimated=bool(row.cost_estimated),
            )
            report.rows.setdefault(row.batch_id, {})[(row.model, row.lane)] = line
            report.models.setdefault(row.batch_id, {}).setdefault(row.model, UsageLine()).add(line)
            report.lanes.setdefault(row.batch_id, {}).setdefault(row.lane, UsageLine()).add(line)
            report.batches.setdefault(row.batch_id, UsageLine()).add(line)
            report.total.add(line)
        for row in await conn.execute(_SKIPPED, {"batch_id": batch_id}):
            # A skip is no call: counted under the model passed over, in the live lane that skips.
            line = UsageLine(skipped_context=int(row.skipped))
            report.rows.setdefault(row.batch_id, {}).setdefault((row.model, "live"), UsageLine()).add(line)
            report.models.setdefault(row.batch_id, {}).setdefault(row.model, UsageLine()).add(line)
            report.lanes.setdefault(row.batch_id, {}).setdefault("live", UsageLine()).add(line)
            report.batches.setdefault(row.batch_id, UsageLine()).add(line)
            report.total.add(line)
        rows = await conn.execute(_CORRECTED, {"batch_id": batch_id})
        report.corrected = {r.batch_id: int(r.corrected) for r in rows}
        # The batch asked for has its estimate read before any call was made, too.
        ids = [batch_id] if batch_id is not None else list(report.batches)
        if ids:
            found = await conn.execute(_ESTIMATES, {"ids": ids})
            report.estimates = {r.id: Estimate.from_json(r.estimate) for r in found}
    return report


# The batches whose free calls the free tier's current day counted, most first: on the partial index of free
# attempts by start time, so its cost is the day's free calls (a day's quota at most), not the table's.
_SPENDERS = sql(
    """
    SELECT b.id, b.name, count(*) AS calls
    FROM attempt a JOIN batch b ON b.id = a.batch_id
    WHERE a.started_at >= :since AND a.models_sent[1] LIKE '%\\:free'
      AND a.outcome NOT IN ({O.IN_FLIGHT}, {O.REUSED}) AND b.simulated = :simulated
    GROUP BY b.id, b.name ORDER BY calls DESC, b.id LIMIT :most
    """
)


@dataclass(slots=True, frozen=True)
class QuotaSpender:
    """A batch and the free calls it made in the free tier's current day."""

    batch_id: str
    name: str | None
    calls: int

    def describe(self) -> str:
        """`batch_… (name) 600`, as status and the fleet page list them."""
        return f"{self.batch_id}{f' ({self.name})' if self.name else ''} {self.calls}"


async def quota_spenders(
    conn: AsyncConnection, since: datetime, simulated: bool, most: int = 5
) -> list[QuotaSpender]:
    """The batches that spent the free tier's day that began at `since` (a simulator's, or OpenRouter's)."""
    rows = await conn.execute(_SPENDERS, {"since": since, "simulated": simulated, "most": most})
    return [QuotaSpender(r.id, r.name, int(r.calls)) for r in rows]
