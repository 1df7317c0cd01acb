"""The simulator's settings: its configuration and the scripted answers (rules) it holds; no server, no CLI."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = [
    "BATCH_MODEL_POLICIES",
    "DAY_SECONDS",
    "MINUTE_SECONDS",
    "ROUTES",
    "Rule",
    "SimConfig",
    "checked_per_model",
    "per_model",
]

_T = TypeVar("_T")

MINUTE_SECONDS = 60.0
DAY_SECONDS = 86400.0

_RULE_KINDS = (
    "status",
    "error_in_200",
    "top_level_error",
    "not_json",
    "hang",
    "reset",
    "reply",
    "trickle",
    "big",
    "line_error",
)

# The routes a rule with `route` fails (batch routes by name, or all of them as "batches"), instead of calls
# whose prompt contains `match`.
ROUTES = (
    "embeddings",
    "batches",
    "batches.create",
    "batches.list",
    "batches.get",
    "batches.results",
    "batches.cancel",
    "batches.delete",
)
# The kinds of answer a route rule can give: the others build a completion, which a route has none of.
_ROUTE_KINDS = ("status", "not_json", "hang", "reset")

# Which batch `model` a create accepts: only `:batch` slugs ("variant"), or base slugs too ("either").
BATCH_MODEL_POLICIES = ("variant", "either")


@dataclass(slots=True)
class Rule:
    """A scripted answer for requests whose last user message contains `match`, for one batch line (`custom_id`),
    or for every call to a route (`route`)."""

    match: str = ""
    kind: str = "status"
    status: int = 500
    times: int = -1  # how many requests it answers; -1 for all
    code: Any = None
    message: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] | None = None
    content: str | None = None
    # hang: how long it hangs (None: an hour); trickle: how long it trickles (None: forever).
    seconds: float | None = None
    # For a scripted 429: X-RateLimit-Reset this many seconds from now, in the headers and the metadata.
    reset_in_seconds: float | None = None
    delay: float = 0.0  # seconds to wait before answering as the rule says
    interval: float = 0.3  # trickle: seconds between keep-alive bytes
    sse: bool = False  # trickle: SSE comment lines instead of spaces
    size: int = 1024 * 1024  # big: bytes in the body
    # Only the batch line with this custom_id (never a live call); `match` must still be in its text.
    custom_id: str | None = None
    # Every call to this route (one of ROUTES) rather than calls whose prompt matches; kinds: _ROUTE_KINDS.
    route: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Rule:
        rule = cls(**{k: v for k, v in data.items() if k in cls.__slots__})
        if rule.kind not in _RULE_KINDS:
            raise ValueError(f"rule kind must be one of {_RULE_KINDS}")
        if rule.interval <= 0:
            raise ValueError("a rule's interval must be above 0")
        if rule.route is not None and rule.route not in ROUTES:
            raise ValueError(f"a rule's route must be one of {ROUTES}")
        if rule.route is not None and rule.kind not in _ROUTE_KINDS:
            raise ValueError(f"a route rule's kind must be one of {_ROUTE_KINDS}")
        return rule


@dataclass(slots=True)
class SimConfig:
    """How the simulator behaves; every field can be changed while it runs."""

    latency_ms: float = 0.0
    free_per_minute: int = 20
    free_window_seconds: float = MINUTE_SECONDS
    free_per_day: int = 50
    # Length of a simulated "day" for the daily quota; None means real UTC days.
    day_seconds: float | None = None
    # How much faster than real time the free tier's clock runs; setting it rescales the two lengths above.
    speed: float = 1.0
    down_models: list[str] = field(default_factory=list)
    valid_keys: list[str] | None = None
    is_free_tier: bool = True
    credits: float | None = None  # None: no credit check; 0 or less: 402 on every call
    record_calls: bool = True
    # Leave `usage.cost` out of answers (some providers and proxies do), to exercise cost estimates.
    omit_cost: bool = False
    # Answer as a bring-your-own-key call: `cost` is OpenRouter's fee, the provider's price is upstream.
    byok: bool = False
    # Chaos: the chance that any call fails with a 500, an error inside HTTP 200, or hangs for a while.
    chaos_500: float = 0.0
    chaos_error_in_200: float = 0.0
    chaos_hang: float = 0.0
    chaos_hang_seconds: float = 30.0
    rules: list[Rule] = field(default_factory=list)
    # Models that err: of a model's replies to a JSON-schema request, this share (0 to 1) fails the schema, chosen
    # by the prompt, the model and how many times the simulator has seen them (stable from run to run). A reply
    # to a correction turn (an assistant reply then a user turn) is always right: the simulator's model of a
    # model that fixes its mistake once told what it was. Live calls and Batch API lines alike.
    err_rate: dict[str, float] = field(default_factory=dict)
    # An erring reply: None for invalid JSON (a valid reply cut short); a string for JSON whose enum fields
    # all hold this label instead (a fixed wrong label).
    err_label: str | None = None
    # Models that mislabel: of a model's structured replies, this share (0 to 1) has every enum field set to
    # another value of its enum (still valid: a plausible wrong label), chosen by the model and the prompt alone,
    # so a record is mislabelled on every run and every retry, and two models disagree on some records.
    label_noise: dict[str, float] = field(default_factory=dict)
    # Models with a fixed answer: every enum field whose enum holds this value takes it (valid JSON, one wrong
    # label always: a model that says "spam" to everything). Both apply to live calls and Batch API lines; a
    # setting for `m` applies to its `m:batch` variant too.
    fixed_label: dict[str, str] = field(default_factory=dict)
    # Every call answers this 5xx until set back to None: OpenRouter down, or its providers (named) down.
    outage_status: int | None = None
    outage_provider_name: str | None = None
    # Say it is a simulator (a header on every answer, `data.simulator` in GET /key). Off, it passes for
    # OpenRouter itself: tests play a real upstream beside a simulator with it.
    identify: bool = True
    # --- the Batch API (jobs.simulator.batches) ---
    # Off, every batch route answers 404, as OpenRouter does for a key the Batch API is not enabled for.
    batches_enabled: bool = True
    # "variant": only `:batch` slugs; a base slug is a 400 at create, as observed live on 2026-08-29 (the newest
    # evidence, batch-api.md §3), so a client that passes here passes there. "either": base slugs are taken too
    # and priced as their `:batch` variant, as the docs' own examples send them.
    batch_model_policy: str = "variant"
    # How long a batch stays in each status (seconds of real time at speed 1, divided by `speed`). Real
    # batches take minutes; the defaults are short so that a trial run finishes while one watches.
    batch_validating_seconds: float = 1.0
    batch_in_progress_seconds: float = 3.0
    batch_finalizing_seconds: float = 1.0
    # How long the provider takes to confirm a cancel (`cancelling` until then).
    batch_cancel_seconds: float = 0.5
    # The provider's deadline: `expires_at` is `created_at` plus this (divided by `speed`).
    batch_window_seconds: float = 86400.0
    # Batches created while on expire: their deadline falls halfway through `in_progress`, so the lines due
    # after it are never answered (they fail with `batch_expired`) and the batch ends `expired`.
    batch_expire: bool = False
    # Off, `POST /batches/{id}/cancel` answers 403, as for an organisation cancels are not enabled for.
    batch_cancel_allowed: bool = True
    batch_max_requests: int = 5000  # more lines: 400
    batch_max_bytes: int = 200_000_000  # a larger body: 413 (200 MB, read as decimal megabytes)


def per_model(settings: Mapping[str, _T], model: str) -> _T | None:
    """A per-model setting for `model`: its own, else its base model's when it is a `:batch` variant (the same
    model answering a batch's lines)."""
    if model in settings:
        return settings[model]
    return settings.get(model.removesuffix(":batch"))


def checked_per_model(name: str, value: Any) -> dict[str, Any]:
    """A per-model setting as `POST /_sim/config` gives it: model ids to shares from 0 to 1 (`err_rate`,
    `label_noise`) or to labels (`fixed_label`); ValueError naming what is wrong."""
    if not isinstance(value, dict) or not all(isinstance(k, str) and k for k in value):
        raise ValueError(f"{name} must map model ids to values")
    for model, setting in value.items():
        if name == "fixed_label":
            if not isinstance(setting, str) or not setting:
                raise ValueError(f"{name} of {model!r} must be a label (a non-empty string)")
        elif isinstance(setting, bool) or not isinstance(setting, int | float) or not 0 <= setting <= 1:
            raise ValueError(f"{name} of {model!r} must be a share from 0 to 1")
    return dict(value)
