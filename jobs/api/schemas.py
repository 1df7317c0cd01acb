"""The API's objects in OpenAI's shapes (files, batches, lists, errors), and what a batch is created with.

Every field OpenAI's objects have is here, under its name and type, so its SDK parses them; orbatch's own
fields of a batch are under `orbatch`.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from jobs.core.states import BatchPriority, Lane

__all__ = [
    "BatchCreate",
    "BatchError",
    "BatchErrors",
    "BatchList",
    "BatchObject",
    "BatchStatusWord",
    "BatchUsage",
    "ErrorBody",
    "ErrorDetail",
    "ExpiresAfter",
    "FileDeleted",
    "FileList",
    "FileObject",
    "InputTokensDetails",
    "ListPage",
    "OrbatchBatch",
    "OrbatchCounts",
    "OutputTokensDetails",
    "Pause",
    "RequestCounts",
]

T = TypeVar("T")

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
    # The first model of the batch's chain.
    model: str | None = None
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

    input_file_id: StrictStr = Field(description="An uploaded file of purpose `batch`.")
    endpoint: StrictStr = Field(description="`/v1/chat/completions`, the only endpoint orbatch runs.")
    completion_window: StrictStr = Field(
        description="`24h`, or a longer window in hours or days (`48h`, `7d`; at most `30d`); past it the "
        "batch is `expired`."
    )
    metadata: dict[StrictStr, StrictStr] | None = Field(
        None, description="Up to 16 pairs; `callback_url` here is the same as the field below."
    )
    output_expires_after: ExpiresAfter | None = None
    models: list[StrictStr] | StrictStr | None = Field(
        None,
        description="The fallback chain (a list, or ids separated by commas) for lines naming no model.",
    )
    max_attempts: StrictInt | None = Field(
        None, ge=1, le=100, description="Failed calls before a request fails."
    )
    max_cost: Decimal | None = Field(None, description="Stop the batch once its spend reaches this many USD.")
    free_only: StrictBool = Field(False, description="Refuse any model that is not a `:free` variant.")
    dedupe: StrictBool = Field(
        False, description="Answer requests identical to one already answered from its stored result."
    )
    priority: BatchPriority = Field(
        BatchPriority.NORMAL,
        description="`urgent` runs before every `normal` batch, `background` yields to every `normal` one; "
        "within a priority the fleet is shared fairly between owners, then between an owner's batches.",
    )
    callback_url: StrictStr | None = Field(
        None,
        description="POSTed the final batch object once, signed (Standard Webhooks); its host must be "
        "allowed by ORBATCH_CALLBACK_ALLOW.",
    )
    lane: Lane = Field(
        Lane.LIVE,
        description="`live` calls each request now; `batch` sends them through OpenRouter's Batch API at its "
        "batch price (about half; minutes to 24 h), what it fails running live; `auto` takes the Batch API for "
        "requests whose first model has a batch variant when the completion window leaves room for it (26 h or "
        "more), live calls for the rest.",
    )
