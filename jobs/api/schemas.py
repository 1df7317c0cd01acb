"""The API's objects in OpenAI's shapes (files, batches, lists, errors), and what a batch is created with.

Every field OpenAI's objects have is here, under its name and type, so its SDK parses them; orbatch's own
fields of a batch are under `orbatch`.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, Strict, StrictBool, StrictInt, StringConstraints

from jobs.api.inputs import NO_NUL, Text
from jobs.core.constants import MAX_COST_DECIMAL_PLACES, MAX_COST_USD
from jobs.core.states import BatchPriority, Lane
from jobs.formats.input_lines import ENDPOINTS

__all__ = [
    "COMPLETION_WINDOW_PATTERN",
    "MAX_COST_DECIMAL_PLACES",
    "MAX_COST_USD",
    "METADATA_KEY_MAX_CHARS",
    "METADATA_MAX_PAIRS",
    "METADATA_VALUE_MAX_CHARS",
    "BatchCreate",
    "BatchError",
    "BatchErrors",
    "BatchEstimate",
    "BatchList",
    "BatchObject",
    "BatchStatusWord",
    "BatchUsage",
    "ErrorBody",
    "ErrorDetail",
    "EstimateCost",
    "EstimateFreeTier",
    "ExpiresAfter",
    "FileDeleted",
    "FileList",
    "FileObject",
    "InputTokensDetails",
    "LaneCost",
    "ListPage",
    "ModelEstimate",
    "OrbatchBatch",
    "OrbatchCounts",
    "OutputTokensDetails",
    "Pause",
    "RequestCounts",
]

T = TypeVar("T")

# OpenAI's metadata bounds: 16 pairs, keys up to 64 characters, values up to 512.
METADATA_MAX_PAIRS = 16
METADATA_KEY_MAX_CHARS = 64
METADATA_VALUE_MAX_CHARS = 512
_MetadataKey = Annotated[str, Strict(), StringConstraints(max_length=METADATA_KEY_MAX_CHARS), NO_NUL]
_MetadataValue = Annotated[str, Strict(), StringConstraints(max_length=METADATA_VALUE_MAX_CHARS), NO_NUL]


# The completion windows taken, as the OpenAPI document states them: 24 to 720 hours, or 1 to 30 days
# (`creation.window_seconds` checks them and says why one is refused; a test checks both agree).
COMPLETION_WINDOW_PATTERN = r"^((2[4-9]|[3-9][0-9]|[1-6][0-9]{2}|7[01][0-9]|720)h|([1-9]|[12][0-9]|30)d)$"

BatchStatusWord = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
]


class ErrorDetail(BaseModel):
    """OpenAI's error: what went wrong, its class, the parameter it concerns and a machine-readable code."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """Every error answer: `{"error": {...}}`."""

    error: ErrorDetail


class FileObject(BaseModel):
    """A file: an upload (`purpose` `batch`) or a batch's output or error file (`batch_output`)."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    # Deprecated by OpenAI and always `processed` here: a stored upload is ready at once.
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class FileDeleted(BaseModel):
    """The answer to a delete."""

    id: str
    object: Literal["file"] = "file"
    deleted: bool


class ListPage(BaseModel, Generic[T]):
    """A page of a cursor-paginated list: pass `last_id` as `after` for the next page while `has_more`."""

    object: Literal["list"] = "list"
    data: list[T]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class FileList(ListPage[FileObject]):
    """A page of files."""


class BatchError(BaseModel):
    """One reason a batch failed validation: a bad line (`line`), or the file as a whole."""

    code: str | None = None
    message: str | None = None
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    """The reasons a batch failed validation (the first 50 bad lines at most)."""

    object: Literal["list"] = "list"
    data: list[BatchError]


class RequestCounts(BaseModel):
    """Requests of the batch: all of them, answered, failed."""

    total: int
    completed: int
    failed: int


class InputTokensDetails(BaseModel):
    """Of the input tokens, those read from the provider's prompt cache."""

    cached_tokens: int


class OutputTokensDetails(BaseModel):
    """Of the output tokens, those spent reasoning."""

    reasoning_tokens: int


class BatchUsage(BaseModel):
    """Tokens of every call the batch made (retries and fallbacks included), as OpenRouter reported them."""

    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class Pause(BaseModel):
    """Why a batch waits (OpenAI has no such state; its `status` stays `in_progress`)."""

    reason: Literal["quota", "budget", "credits", "auth"]
    message: str | None = None
    # When it resumes by itself (a spent daily quota at 00:00 UTC); None: it needs `orbatch resume`.
    resume_at: int | None = None


class OrbatchCounts(BaseModel):
    """Requests OpenAI's `request_counts` do not show: waiting, being called, cancelled (or expired)."""

    pending: int
    running: int
    cancelled: int
    # In the batch lane: waiting for, or in, a remote batch of OpenRouter's Batch API.
    remote: int = 0


class CostRange(BaseModel):
    """USD as decimal strings: the prompt alone (`low`) to the prompt and every completion bound spent (`high`)."""

    low: str
    high: str


class LaneCost(CostRange):
    """A lane's price of a model's requests, and the catalogue id whose price it is."""

    price_id: str


class EstimateCost(BaseModel):
    """The whole batch's cost by lane; null where a model has no price on that lane."""

    # Every call made at once, at each model's own price.
    live: CostRange | None
    # OpenRouter's Batch API, at each model's `:batch` variant's price (about half).
    batch: CostRange | None


class EstimateFreeTier(BaseModel):
    """Requests bound for `:free` models, and the days of the daily free quota they need."""

    requests: int
    per_day: int | None
    days: int | None
    # Where the daily quota came from (ORBATCH_FREE_REQUESTS_PER_DAY, GET /key, an assumption).
    source: str | None


class ModelEstimate(BaseModel):
    """One model's share (the first of its requests' chains: the one called unless it fails)."""

    model: str
    requests: int
    prompt_tokens: int
    # The completion tokens its requests may take: their own max_tokens, the default for those with none.
    completion_tokens: int
    completion_assumed: int
    # The encoding its prompts were counted with (its own), or `approximate (UTF-8 bytes / 3)`.
    tokenizer: str
    exact: bool
    free: bool
    live: LaneCost | None
    batch: LaneCost | None


class BatchEstimate(BaseModel):
    """What a batch would hold and cost (`dry_run`), or what it was estimated at when created."""

    object: Literal["batch.estimate"] = "batch.estimate"
    requests: int
    # Bad lines left out (`skip_invalid`), and the first of them.
    invalid: int
    skipped: list[str] = []
    prompt_tokens: int
    completion_tokens: int
    completion_assumed: int
    # The completion tokens a request with no max_tokens is allowed (ORBATCH_ESTIMATE_COMPLETION_TOKENS).
    completion_default: int
    # Every prompt was counted with its model's own tokenizer.
    exact: bool
    # The catalogue's prices were read (GET /models).
    priced: bool
    cost: EstimateCost
    free_tier: EstimateFreeTier
    models: list[ModelEstimate]


class OrbatchBatch(BaseModel):
    """orbatch's own fields of a batch."""

    # orbatch's status word: OpenAI's, plus `paused`.
    status: str
    pause: Pause | None = None
    # The model chain lines without their own are sent with, in fallback order.
    models: list[str]
    max_attempts: int
    free_only: bool
    dedupe: bool
    # `urgent`, `normal` or `background`: which batches run first.
    priority: str = "normal"
    # USD as a decimal string, never a float: what every call cost so far, and the cap.
    cost_usd: str
    max_cost_usd: str | None = None
    # Upstream calls made, retries and fallbacks included.
    calls: int
    request_counts: OrbatchCounts
    callback_url: str | None = None
    # What the batch was estimated to hold and cost when it was created; null for batches made before it was kept.
    estimate: BatchEstimate | None = None
    # `live`, `batch` or `auto`: how its requests reach OpenRouter; and what the batch lane said, if anything
    # (the Batch API not enabled for the key: the batch ran live).
    lane: str = "live"
    lane_note: str | None = None


class BatchObject(BaseModel):
    """A batch, with every field of OpenAI's and orbatch's own under `orbatch`."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: BatchStatusWord
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts
    usage: BatchUsage
    metadata: dict[str, str] | None = None
    model: str | None = Field(
        None,
        description="The model every request of the batch is sent to first: a line's own `model` (or the first "
        "of its `models`), else the first of the batch's `models`. Null when requests start with different "
        "models, or when a refused batch has no chain. Fallbacks do not count.",
    )
    orbatch: OrbatchBatch


class BatchList(ListPage[BatchObject]):
    """A page of batches, newest first."""


class ExpiresAfter(BaseModel):
    """When the output and error files expire: `seconds` after they are made (`anchor` `created_at`)."""

    model_config = ConfigDict(extra="forbid")

    anchor: Literal["created_at"]
    seconds: StrictInt = Field(ge=3600, le=2_592_000)


class BatchCreate(BaseModel):
    """`POST /v1/batches`: OpenAI's parameters, then orbatch's own (the SDK sends those with `extra_body`)."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: Text = Field(description="An uploaded file of purpose `batch`.")
    endpoint: Text = Field(
        description="`/v1/chat/completions` or `/v1/embeddings`: every line of the file must be for it.",
        json_schema_extra={"enum": list(ENDPOINTS)},
    )
    completion_window: Text = Field(
        description="`24h`, or a longer window in hours or days (`48h`, `7d`; at most `30d`); past it the "
        "batch is `expired`.",
        json_schema_extra={"pattern": COMPLETION_WINDOW_PATTERN},
    )
    metadata: dict[_MetadataKey, _MetadataValue] | None = Field(
        None,
        max_length=METADATA_MAX_PAIRS,
        description="Up to 16 pairs, keys up to 64 characters, values up to 512; `name` names the batch, "
        "`callback_url` is the same as the field below.",
    )
    output_expires_after: ExpiresAfter | None = None
    models: list[Text] | Text | None = Field(
        None,
        description="The fallback chain (a list, or ids separated by commas) for lines naming no model.",
    )
    max_attempts: StrictInt | None = Field(
        None, ge=1, le=100, description="Failed calls before a request fails."
    )
    max_cost: Decimal | None = Field(
        None,
        gt=0,
        le=MAX_COST_USD,
        decimal_places=MAX_COST_DECIMAL_PLACES,
        allow_inf_nan=False,
        description="Stop the batch once its spend reaches this many USD (above zero, at most a billion).",
    )
    free_only: StrictBool = Field(False, description="Refuse any model that is not a `:free` variant.")
    dedupe: StrictBool = Field(
        False, description="Answer requests identical to one already answered from its stored result."
    )
    feedback: StrictBool = Field(
        True,
        description="Retry a reply that fails its JSON schema with a turn quoting it and saying what was wrong; "
        "false: the same prompt again.",
    )
    heal: StrictBool = Field(
        False,
        description="Ask OpenRouter's response-healing plugin to repair malformed JSON in schema replies.",
    )
    vote: list[Text] | Text | None = Field(
        None,
        description="Send each request to every one of these models (all of them, not a fallback chain): the "
        "output file has a line per call, its body's `model` saying whose; `orbatch results --format records` and "
        "`orbatch score` give the vote (each field's majority, the agreement, each answer).",
    )
    replace_models: StrictBool = Field(
        False,
        description="Send every line to `models`, whatever model the line names (a file written for other "
        "models). A bare name (`gpt-4o-mini`) runs as OpenRouter's id when one provider has it, without this.",
    )
    priority: BatchPriority = Field(
        BatchPriority.NORMAL,
        description="`urgent` runs before every `normal` batch, `background` yields to every `normal` one; "
        "within a priority the fleet is shared fairly between owners, then between an owner's batches.",
    )
    callback_url: Text | None = Field(
        None,
        description="POSTed the final batch object once, signed (Standard Webhooks); its host must be "
        "allowed by ORBATCH_CALLBACK_ALLOW.",
    )
    dry_run: StrictBool = Field(
        False,
        description="Make no batch: read the file as a create would (the same checks and errors) and answer "
        "what it would cost, a `batch.estimate` object. Nothing is stored or queued.",
    )
    lane: Lane = Field(
        Lane.LIVE,
        description="`live` calls each request now; `batch` sends them through OpenRouter's Batch API at its "
        "batch price (about half; minutes to 24 h), what it fails running live; `auto` takes the Batch API for "
        "requests whose first model has a batch variant when the completion window leaves room for it (26 h or "
        "more), live calls for the rest.",
    )
