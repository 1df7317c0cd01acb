"""What one worker counts as it works: its Prometheus metrics, and the load and activity its heartbeat tells."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime

from jobs.core.states import PauseReason, RequestStatus
from jobs.observation import metrics
from worker.classify import Failure, Success, Usage
from worker.ends import TaskResult

__all__ = ["Meter", "rate_limit_kind"]

# The status label of a call that got no HTTP answer: the transport failure's code (see worker.classify).
_TRANSPORT_CODES = frozenset({"timeout", "connect_timeout", "connection_error"})


def rate_limit_kind(failure: Failure) -> str | None:
    """The kind of a 429 (also one inside an HTTP 200 body), or None for any other failure."""
    if failure.status != 429 and failure.code != "429":
        return None
    if failure.provider:
        return "provider"
    if failure.park_reason is PauseReason.QUOTA or "per-day" in failure.message:
        return "free_per_day"
    if "per-min" in failure.message:
        return "free_per_minute"
    return "other"


def _status_label(outcome: Success | Failure) -> str:
    if outcome.status is not None and 100 <= outcome.status <= 599:
        return str(outcome.status)
    if isinstance(outcome, Failure) and outcome.code in _TRANSPORT_CODES:
        return outcome.code
    return "none"


class Meter:
    """One worker's counts: calls and tasks now (for its heartbeat), and everything `/metrics` adds up."""

    def __init__(self, listed: Callable[[str], Awaitable[bool]] | None = None) -> None:
        # Whether OpenRouter's catalogue lists a model id: only listed ids become label values.
        self._listed = listed
        self._models = metrics.ModelLabels()
        # Recordings waiting for the catalogue's answer about a model (held so they are not collected).
        self._pending: set[asyncio.Task[None]] = set()
        self.calls = 0
        self.tasks = 0
        self.answered = 0
        self.last_activity: datetime | None = None

    def _touch(self) -> None:
        self.last_activity = datetime.now(UTC)

    @contextlib.contextmanager
    def task(self) -> Iterator[None]:
        """Around one task: counted as held while it runs."""
        self.tasks += 1
        metrics.TASKS_IN_PROGRESS.inc()
        self._touch()
        try:
            yield
        finally:
            self.tasks -= 1
            metrics.TASKS_IN_PROGRESS.dec()
            self._touch()

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """Around one upstream call: counted as in flight while it is open."""
        self.calls += 1
        metrics.CALLS_IN_FLIGHT.inc()
        try:
            yield
        finally:
            self.calls -= 1
            metrics.CALLS_IN_FLIGHT.dec()

    def ended(self, result: TaskResult) -> None:
        """A task came to `result` (what run_request returns)."""
        metrics.TASKS.labels(result.value).inc()

    def finished(self, status: RequestStatus) -> None:
        """A request reached its final state: `completed` or `failed`."""
        metrics.FINISHED.labels(status.value).inc()
        if status is RequestStatus.COMPLETED:
            self.answered += 1

    def waited(self, free: bool, seconds: float) -> None:
        """A call's throttle slot came after `seconds`."""
        metrics.THROTTLE_WAIT.labels("free" if free else "paid").observe(max(0.0, seconds))

    def called(self, models_sent: Sequence[str], outcome: Success | Failure, latency_ms: int) -> None:
        """One upstream call came back (or failed to): its model, status, latency, and a 429's kind."""
        if isinstance(outcome, Failure):
            kind = rate_limit_kind(outcome)
            if kind is not None:
                metrics.RATE_LIMITED.labels(kind).inc()
        status = _status_label(outcome)

        def record(model: str) -> None:
            metrics.CALLS.labels(model, status).inc()
            metrics.CALL_SECONDS.labels(model).observe(latency_ms / 1000)

        self._by_model(outcome.model or (models_sent[0] if models_sent else None), record)

    def used(self, model: str | None, usage: Usage) -> None:
        """A call's tokens and cost, once its cost is known (reported, or estimated from list prices)."""
        counts = [
            (kind, tokens)
            for kind, tokens in (
                ("prompt", usage.prompt_tokens),
                ("completion", usage.completion_tokens),
                ("reasoning", usage.reasoning_tokens),
                ("cached", usage.cached_tokens),
            )
            # A counter only goes up: a malformed negative count from upstream is not counted.
            if tokens and tokens > 0
        ]
        cost = float(usage.cost) if usage.cost and usage.cost > 0 else 0.0

        def record(label: str) -> None:
            for kind, tokens in counts:
                metrics.TOKENS.labels(label, kind).inc(tokens)
            if cost:
                metrics.COST.labels(label).inc(cost)

        self._by_model(model, record)

    def _by_model(self, model: str | None, record: Callable[[str], None]) -> None:
        """Record under the model's label now, or once the catalogue said whether it lists the model.

        Never awaited by the task: asking the catalogue may read Postgres, and a metric must not delay the
        record of a call that was paid for.
        """
        label = self._models.decided(model)
        if label is not None or model is None:
            record(label or metrics.OTHER_MODEL)
            return
        task = asyncio.create_task(self._label_later(model, record))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _label_later(self, model: str, record: Callable[[str], None]) -> None:
        try:
            listed = True if self._listed is None else await self._listed(model)
        except Exception:  # no catalogue: the model is counted, as `other`
            listed = False
        record(self._models.label(model, listed))
