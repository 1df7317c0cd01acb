"""`/v1/batches`: create, retrieve, list and cancel, as OpenAI's Batch API does them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from python_multipart.multipart import parse_options_header

from jobs.api.auth import Authorized
from jobs.api.creation import create_batch, estimate_batch
from jobs.api.objects import get_batch, list_batches
from jobs.api.responses import ERRORS, json_response
from jobs.api.schemas import BatchCreate, BatchEstimate, BatchList, BatchObject
from jobs.api.state import api_state
from jobs.core.constants import BATCH_LIST_DEFAULT, BATCH_LIST_MAX
from jobs.core.errors import Conflict, UnsupportedMediaType
from jobs.operations.control import CANCEL_REFUSED, cancel_batch

__all__ = ["router"]

router = APIRouter(tags=["batches"])


def json_content(request: Request) -> None:
    """UnsupportedMediaType (415) unless the body is declared JSON."""
    kind, _ = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"application/json" and not kind.endswith(b"+json"):
        shown = request.headers.get("content-type", "none").split(";", 1)[0].strip()[:100]
        raise UnsupportedMediaType(
            f"Invalid Content-Type header ({shown}), expected application/json.",
            code="unsupported_media_type",
        )


@router.post(
    "/batches",
    response_model=BatchObject | BatchEstimate,
    responses={
        **ERRORS,
        400: {
            **ERRORS[400],
            "description": f"{ERRORS[400]['description']} Also an input file whose purpose is not `batch`.",
        },
    },
    summary="Create a batch (or estimate one: `dry_run`)",
)
async def create(
    request: Request, caller: Authorized, _: Annotated[None, Depends(json_content)], body: BatchCreate
) -> Response:
    """Make a batch from an uploaded file; its lines are validated now.

    A file with bad lines gives a batch with status `failed` and the lines in `errors`; otherwise the batch
    is `in_progress` and queued. orbatch's own options (`models`, `max_attempts`, `max_cost`, `free_only`,
    `dedupe`, `feedback`, `heal`, `callback_url`) go beside OpenAI's (the SDK sends them with `extra_body`).

    With `dry_run: true` no batch is made: the answer is a `batch.estimate` (requests by model, prompt tokens,
    completion tokens at most, the cost range live and through OpenRouter's Batch API, the free tier's days),
    and a file with bad lines is a 400 naming them. Nothing is stored or queued.
    """
    state = api_state(request)
    if body.dry_run:
        estimate = await estimate_batch(state, caller, body)
        return json_response(BatchEstimate.model_validate(estimate.to_json()))
    batch_id = await create_batch(state, caller, body)
    return await _fresh(request, caller.owner, batch_id)


@router.get("/batches/{batch_id}", response_model=BatchObject, responses=ERRORS, summary="Retrieve a batch")
async def retrieve(request: Request, caller: Authorized, batch_id: str) -> Response:
    """A batch with its counts and usage (read from maintained tallies: no scan of its requests).

    An instance answers from the object it read within ORBATCH_API_BATCH_CACHE_SECONDS (1 s).
    """
    state = api_state(request)

    async def read() -> bytes:
        async with state.reads.connect() as conn:
            return (await get_batch(conn, caller.owner, batch_id)).model_dump_json().encode()

    return Response(await state.batches.get(caller.owner, batch_id, read), media_type="application/json")


@router.get("/batches", response_model=BatchList, responses=ERRORS, summary="List batches")
async def list_route(
    request: Request,
    caller: Authorized,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=BATCH_LIST_MAX)] = BATCH_LIST_DEFAULT,
) -> Response:
    """The key's batches, newest first; `after` a batch id for the next page."""
    async with api_state(request).reads.connect() as conn:
        batches, more = await list_batches(conn, caller.owner, after, limit)
    return json_response(
        BatchList(
            data=batches,
            first_id=batches[0].id if batches else None,
            last_id=batches[-1].id if batches else None,
            has_more=more,
        )
    )


@router.post(
    "/batches/{batch_id}/cancel",
    response_model=BatchObject,
    responses={**ERRORS, 409: {"description": "The batch has already ended."}},
    summary="Cancel a batch",
)
async def cancel(request: Request, caller: Authorized, batch_id: str) -> Response:
    """Cancel a batch: `cancelling` at once, calls in flight finish and are kept, then `cancelled`."""
    state = api_state(request)
    async with state.reads.connect() as conn:
        batch = await get_batch(conn, caller.owner, batch_id)
    if batch.orbatch.status in CANCEL_REFUSED:
        raise Conflict(
            f"Cannot cancel a batch with status '{batch.status}'.",
            param="batch_id",
            code="batch_not_cancellable",
        )
    await cancel_batch(state.engine, batch_id)
    return await _fresh(request, caller.owner, batch_id)


async def _fresh(request: Request, owner: str, batch_id: str) -> Response:
    """The batch as it is now, which this instance's next GETs also answer."""
    state = api_state(request)
    async with state.reads.connect() as conn:
        body = (await get_batch(conn, owner, batch_id)).model_dump_json().encode()
    state.batches.put(owner, batch_id, body)
    return Response(body, media_type="application/json")
