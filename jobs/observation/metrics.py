"""What one process counts for Prometheus: a worker's tasks, calls, waits, tokens and cost, in its own registry.

Per-process counters only: Prometheus adds them up across workers (`sum(rate(...))`). What the fleet shares
(queue depth, the free tier's day, the breaker, workers alive) is read from Redis at scrape time instead
(`jobs.observation.gauges`), so it is the same whichever process answers. Labels are bounded: outcomes, HTTP statuses and
model ids from the catalogue, never a batch, request or custom id (each label value is a series kept for ever).
"""

from __future__ import annotations

import importlib.metadata
import time
from functools import lru_cache

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector

__all__ = [
    "BUILD",
    "CALLS",
    "CALLS_IN_FLIGHT",
    "CALL_SECONDS",
    "CONCURRENCY",
    "COST",
    "FINISHED",
    "OTHER_MODEL",
    "RATE_LIMITED",
    "REGISTRY",
    "TASKS",
    "TASKS_IN_PROGRESS",
    "THROTTLE_WAIT",
    "TOKENS",
    "ModelLabels",
    "orbatch_version",
]

# Call latency buckets (seconds): a chat completion takes from a tenth of a second (a cached or tiny answer) to
# minutes (a long reasoning answer), up to the call's default deadline of 300 s.
CALL_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
# Throttle wait buckets (seconds): no wait at all for paid calls, up to the 3 s GCRA spacing of free calls at
# 20 a minute, and up to ORBATCH_MAX_THROTTLE_WAIT (30 s) behind a queue of reserved slots or a cool-down.
THROTTLE_WAIT_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0)
# A worker labels its metrics with at most this many model ids (others are `other`): model ids come from
# OpenRouter's catalogue, but `submit --no-check-models` lets any string through, and every label value is a
# time series Prometheus keeps.
MAX_MODEL_LABELS = 200
# A model id the catalogue did not list is labelled `other` without asking again for this long: the worker's
# price book reloads the list on a miss at most once a minute, so asking sooner only waits on its lock.
MODEL_LABEL_RECHECK_SECONDS = 60.0

# orbatch's own registry rather than the library's global one: exactly these metrics and the process's, whatever
# else the process imports.
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)

BUILD = Info("orbatch_build", "The orbatch version this process runs.", registry=REGISTRY)
TASKS = Counter(
    "orbatch_tasks",
    "Tasks (one attempt of one request) this worker ran, by what they came to: completed, retry, fallback, "
    "throttled-<wait>, waiting-outage, reused, refused, ...",
    ["result"],
    registry=REGISTRY,
)
FINISHED = Counter(
    "orbatch_requests_finished",
    "Requests this worker brought to their final state, by outcome (completed, failed).",
    ["outcome"],
    registry=REGISTRY,
)
CALLS = Counter(
    "orbatch_upstream_calls",
    "Calls this worker made to OpenRouter, by the model that served (else the first sent) and the HTTP status "
    "(or timeout, connect_timeout, connection_error when no HTTP answer came).",
    ["model", "status"],
    registry=REGISTRY,
)
RATE_LIMITED = Counter(
    "orbatch_rate_limited",
    "HTTP 429 answers, by kind: free_per_minute, free_per_day, provider (an upstream provider's own limit), "
    "other.",
    ["kind"],
    registry=REGISTRY,
)
THROTTLE_WAIT = Histogram(
    "orbatch_throttle_wait_seconds",
    "How long a call waited for its throttle slot before it was sent, by tier (free, paid).",
    ["tier"],
    buckets=THROTTLE_WAIT_BUCKETS,
    registry=REGISTRY,
)
CALL_SECONDS = Histogram(
    "orbatch_call_duration_seconds",
    "Upstream call latency, connect to last byte, by the model that served (else the first sent).",
    ["model"],
    buckets=CALL_SECONDS_BUCKETS,
    registry=REGISTRY,
)
TOKENS = Counter(
    "orbatch_tokens",
    "Tokens OpenRouter reported, by the model that served and kind (prompt, completion, reasoning, cached).",
    ["model", "kind"],
    registry=REGISTRY,
)
COST = Counter(
    "orbatch_cost_usd",
    "What the calls cost in US dollars, as OpenRouter reported it (else estimated from list prices), by the "
    "model that served.",
    ["model"],
    registry=REGISTRY,
)
CALLS_IN_FLIGHT = Gauge(
    "orbatch_calls_in_flight", "Upstream calls this worker has open now.", registry=REGISTRY
)
TASKS_IN_PROGRESS = Gauge(
    "orbatch_tasks_in_progress",
    "Requests this worker holds now: calling, or waiting for a throttle slot.",
    registry=REGISTRY,
)
CONCURRENCY = Gauge(
    "orbatch_worker_concurrency", "Requests this worker may hold at once (--concurrency).", registry=REGISTRY
)

# The label for a model that is not in the catalogue, or past MAX_MODEL_LABELS.
OTHER_MODEL = "other"


class ModelLabels:
    """Model ids as label values: catalogue ids only, at most MAX_MODEL_LABELS of them per process, else `other`."""

    def __init__(self, limit: int = MAX_MODEL_LABELS) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        # Ids the catalogue did not list, and when it said so (a new model may be listed later).
        self._unlisted: dict[str, float] = {}

    def decided(self, model: str | None) -> str | None:
        """The label for `model` when it is known without asking the catalogue; None when it must be asked."""
        if not model:
            return OTHER_MODEL
        if model in self._seen:
            return model
        if len(self._seen) >= self.limit:
            return OTHER_MODEL
        checked = self._unlisted.get(model)
        if checked is not None and time.monotonic() - checked < MODEL_LABEL_RECHECK_SECONDS:
            return OTHER_MODEL
        return None

    def label(self, model: str, listed: bool) -> str:
        """The label for `model` once the catalogue said whether it lists it."""
        if not listed:
            if len(self._unlisted) < self.limit:
                self._unlisted[model] = time.monotonic()
            return OTHER_MODEL
        self._unlisted.pop(model, None)
        if model not in self._seen and len(self._seen) >= self.limit:
            return OTHER_MODEL
        self._seen.add(model)
        return model


@lru_cache(maxsize=1)
def orbatch_version() -> str:
    """The installed orbatch's version, as `orbatch --version` prints it."""
    return importlib.metadata.version("orbatch")
