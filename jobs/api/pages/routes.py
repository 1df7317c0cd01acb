"""The dashboard's routes: the batch list, a batch's page and its actions and downloads, the fleet, sign-in."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.api.pages.charts import finished_chart, model_chart
from jobs.api.pages.reads import (
    BatchLine,
    Named,
    read_batch,
    read_batch_page,
    read_estimate,
    read_named,
    read_running,
    read_tallies,
)
from jobs.api.pages.render import render
from jobs.api.pages.session import Viewer, check_form, end_session, find_viewer, start_session
from jobs.api.pages.views import ACTIONS, account_view, batch_view
from jobs.api.state import api_state
from jobs.core.constants import CHART_SPANS, FLEET_READ_SECONDS, SESSION_COOKIE, SESSION_SECONDS
from jobs.core.errors import BadInput, Conflict, NotFound, Unauthorized
from jobs.core.logs import get_logger
from jobs.core.states import BatchPriority, BatchStatus, PauseReason
from jobs.observation.gauges import FleetGauges, read_fleet_gauges
from jobs.observation.schedule_view import read_running_by_kind
from jobs.observation.usage import quota_spenders
from jobs.operations.control import (
    CANCEL_REFUSED,
    RETRY_FROM,
    cancel_batch,
    change_priority,
    resume_batch,
    retry_failed,
)
from jobs.operations.results import stream_file
from jobs.operations.scores import Score, score_batch

__all__ = ["router"]

# Batches per page of the list: a screen's worth, and each one a handful of tally rows to sum.
PAGE_BATCHES = 20

log = get_logger(__name__)

router = APIRouter(include_in_schema=False)

# What an action tells the page it returns to: fixed words chosen by what the action did, so nothing of a URL
# is shown back.
_NOTICES = {
    "cancelled": "Cancel asked: no new call starts; the calls in flight finish and are kept.",
    "nothing_to_cancel": "Nothing to cancel: the batch had already stopped.",
    "retried": "The failed requests are queued again, each with its full number of attempts.",
    "nothing_to_retry": "No failed request to retry.",
    "resumed": "Resumed: the batch's requests are queued again.",
    "requeued": "The batch was running: its unfinished requests are queued again.",
    "not_paused": "The batch is not paused: nothing to resume.",
    "priority_urgent": "Priority urgent: its next requests go before every normal batch's.",
    "priority_normal": "Priority normal: its next requests share the fleet fairly with the other batches.",
    "priority_background": "Priority background: its next requests yield to every normal batch's.",
}
# And what the batch's state refused.
_PROBLEMS = {
    "cancel": "This batch has ended: there is nothing to cancel.",
    "retry": "Only a running or completed batch retries its failed requests.",
    "resume": "This batch cannot be resumed from here: its budget is spent. Raise it with "
    "`orbatch resume BATCH --max-cost USD`.",
}


async def _viewer(request: Request) -> Viewer:
    viewer = await find_viewer(request)
    if viewer is None:
        raise Unauthorized("Sign in with your orbatch key to see this page.")
    return viewer


async def _gauges(request: Request) -> FleetGauges | None:
    """The fleet's gauges from Redis, or None when Redis does not answer in time (the page still shows)."""
    state = api_state(request)
    try:
        async with asyncio.timeout(FLEET_READ_SECONDS):
            return await read_fleet_gauges(state.redis, state.settings)
    except Exception as exc:  # the batches are in Postgres: a page shows them without the fleet's gauges
        log.warning("could not read the fleet's gauges from Redis", error=str(exc))
        return None


async def _batch(request: Request, viewer: Viewer, batch_id: str) -> BatchLine:
    async with api_state(request).reads.connect() as conn:
        line = await read_batch(conn, viewer.scope, batch_id)
    if line is None:
        raise NotFound(
            f"No batch found with id '{batch_id[:100]}'.", param="batch_id", code="batch_not_found"
        )
    return line


@router.api_route("/", methods=["GET", "HEAD"])
async def batches_page(request: Request, before: str | None = None) -> Response:
    """The viewer's batches, newest first, a page at a time."""
    viewer = await _viewer(request)
    async with api_state(request).reads.connect() as conn:
        lines, more = await read_batch_page(conn, viewer.scope, before, PAGE_BATCHES)
        running = await read_running_by_kind(conn)
    gauges = await _gauges(request)
    now = datetime.now(UTC)
    return render(
        request,
        "batches.html",
        viewer=viewer,
        batches=[batch_view(line, gauges, now, running) for line in lines],
        older=lines[-1].id if more and lines else None,
        first_page=before is None,
    )


@router.post("/batches/{batch_id}/{action}")
async def batch_action(
    request: Request,
    batch_id: str,
    action: Literal["cancel", "retry", "resume", "priority"],
    token: Annotated[str | None, Form()] = None,
    priority: Annotated[BatchPriority | None, Form()] = None,
) -> Response:
    """Cancel, retry the failed requests of, resume a batch, or set its priority; then back to its page, which
    says what happened."""
    viewer = await _viewer(request)
    check_form(request, viewer, token)
    line = await _batch(request, viewer, batch_id)
    engine = api_state(request).engine
    try:
        if action == "cancel":
            if line.status in CANCEL_REFUSED:
                raise Conflict(line.status)
            said = await cancel_batch(engine, batch_id)
            done = "nothing_to_cancel" if said.startswith("already") else "cancelled"
        elif action == "retry":
            done = "retried" if await retry_failed(engine, batch_id) else "nothing_to_retry"
        elif action == "priority":
            if priority is None:
                raise BadInput("choose a priority: urgent, normal or background", param="priority")
            await change_priority(engine, batch_id, priority)
            done = f"priority_{priority.value}"
        else:
            said = await resume_batch(engine, batch_id)
            done = {"resumed": "resumed"}.get(
                said, "requeued" if said.startswith("running") else "not_paused"
            )
    except Conflict:
        # Back to the page by GET like any action, so a reload never posts again and the page keeps refreshing.
        return RedirectResponse(f"/batches/{batch_id}?problem={action}", status_code=303)
    finally:
        # The API's next GET of this batch shows the change, not the object it read a moment ago.
        api_state(request).batches.forget(batch_id)
    return RedirectResponse(f"/batches/{batch_id}?notice={done}", status_code=303)


@router.api_route("/batches/{batch_id}/{kind}.jsonl", methods=["GET", "HEAD"])
async def batch_download(request: Request, batch_id: str, kind: Literal["results", "errors"]) -> Response:
    """The batch's completed requests (or its failures) so far, as OpenAI Batch output lines."""
    viewer = await _viewer(request)
    await _batch(request, viewer, batch_id)
    pieces = stream_file(api_state(request).engine, batch_id, "output" if kind == "results" else "errors")
    return StreamingResponse(
        _closing(pieces),
        media_type="application/jsonl",
        headers={
            "Content-Disposition": f'attachment; filename="{batch_id[:100]}-{kind}.jsonl"',
            "X-Content-Type-Options": "nosniff",
        },
    )


async def _closing(pieces: AsyncGenerator[bytes]) -> AsyncIterator[bytes]:
    # A client that leaves mid-download closes the export's generator, and with it its database connection.
    async with contextlib.aclosing(pieces):
        async for piece in pieces:
            yield piece


_GOLD = text("SELECT gold FROM batch WHERE id = :id")
# A running batch this large is scored once it ends: the score reads every answer, and the page refreshes.
SCORE_LIVE_MAX_REQUESTS = 20_000


async def _score(
    engine: AsyncEngine, batch_id: str, gold: str | None, ended: bool, total: int
) -> tuple[Score | None, str | None]:
    """The batch's score against its gold field (named at submit), or why there is none to show."""
    if gold is None:
        return None, None
    if not ended and total > SCORE_LIVE_MAX_REQUESTS:
        return (
            None,
            f"scored against {gold!r} once the batch ends ({total:,} requests are too many to score live)",
        )
    try:
        return await score_batch(engine, batch_id, gold), None
    except BadInput as exc:
        return None, f"not scored against {gold!r}: {exc}"


# After the downloads: a name may hold slashes, so this path takes the rest of the address.
@router.api_route("/batches/{ref:path}", methods=["GET", "HEAD"])
async def batch_page(
    request: Request,
    ref: str,
    notice: str | None = None,
    problem: str | None = None,
    by: str | None = None,
) -> Response:
    """One batch: counts, spend by model, fallbacks, failures, tries, its life in charts, and its actions.

    `ref` is the batch's id, or a name: the latest batch of that name the viewer may see, whose page the browser
    is sent to (`?by=name` there says how many batches share the name)."""
    viewer = await _viewer(request)
    if not ref:
        return RedirectResponse("/", status_code=303)
    state = api_state(request)
    named: Named | None = None
    async with state.reads.connect() as conn:
        line = await read_batch(conn, viewer.scope, ref)
        if line is None:
            found = await read_named(conn, viewer.scope, ref)
            if found is None:
                raise NotFound(
                    f"No batch found with the id or name '{ref[:100]}'.",
                    param="batch_id",
                    code="batch_not_found",
                )
            return RedirectResponse(f"/batches/{found.latest}?by=name", status_code=303)
        if by == "name" and line.name:
            named = await read_named(conn, viewer.scope, line.name)
        now = datetime.now(UTC)
        tallies = await read_tallies(conn, line, now, CHART_SPANS, state.chart_minutes)
        running = await read_running_by_kind(conn)
        estimate = await read_estimate(conn, line.id)
        gold = (await conn.execute(_GOLD, {"id": line.id})).scalar()
    view = batch_view(line, await _gauges(request), now, running)
    score, score_problem = await _score(state.engine, line.id, gold, view.ended, line.total)
    end = line.finished_at or now
    fallbacks = sum(m.fallbacks for m in tallies.models)
    answers = sum(m.answers for m in tallies.models)
    paused = line.status == BatchStatus.PAUSED
    return render(
        request,
        "batch.html",
        viewer=viewer,
        batch=view,
        priorities=[p.value for p in BatchPriority],
        # Others share its name: said when the page was asked for by the name.
        named=named if named is not None and named.count > 1 else None,
        tallies=tallies,
        estimate=None if estimate is None else estimate.live,
        gold=gold,
        score=score,
        score_problem=score_problem,
        fallbacks=fallbacks,
        answers=answers,
        finished=finished_chart(tallies.minutes, tallies.bucket, end),
        by_model=model_chart(tallies.minutes, tallies.bucket, end),
        notice=_NOTICES.get(notice or ""),
        problem=_PROBLEMS.get(problem or ""),
        can_cancel=line.status not in CANCEL_REFUSED
        and line.status not in (BatchStatus.CANCELLING, BatchStatus.CANCELLED),
        can_retry=line.status in RETRY_FROM and line.counts["failed"] > 0,
        # A spent budget needs a higher cap, which the command line takes, and a spent quota resumes by itself
        # when the day turns (resuming sooner only pauses again): the page says so instead.
        can_resume=paused
        and line.pause_reason in (PauseReason.CREDITS, PauseReason.AUTH, PauseReason.INTERRUPTED),
        action_hint=ACTIONS.get(line.pause_reason or "") if paused else None,
    )


@router.api_route("/fleet", methods=["GET", "HEAD"])
async def fleet_page(request: Request) -> Response:
    """Workers alive, calls in flight, the free tier today, pacing, breaker and cool-downs, queue depth."""
    viewer = await _viewer(request)
    gauges = await _gauges(request)
    now = datetime.now(UTC)
    accounts = []
    async with api_state(request).reads.connect() as conn:
        for account in gauges.accounts if gauges else []:
            # Which batches spent the day: the fleet's free tier is every owner's, so its spenders are shown.
            day_began = datetime.fromtimestamp(account.day_ends_at - account.day_seconds, UTC)
            spenders = await quota_spenders(conn, day_began, account.simulated)
            accounts.append(account_view(account, now, spenders))
        # The viewer's running batches, each with the slots it holds and its turn among every running batch.
        lines = await read_running(conn, viewer.scope, PAGE_BATCHES)
        running = await read_running_by_kind(conn)
    batches = [batch_view(line, gauges, now, running) for line in lines]
    return render(
        request,
        "fleet.html",
        viewer=viewer,
        gauges=gauges,
        accounts=accounts,
        now=now,
        running=[
            f"{n} {priority}{' simulated' if simulated else ''}"
            for (simulated, priority), n in sorted(running.items())
        ],
        batches=batches,
    )


def _safe_next(target: str | None) -> str:
    # Only a path on this server: `//host` or `/\host` would send the browser elsewhere after signing in.
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    return target


@router.api_route("/signin", methods=["GET", "HEAD"])
async def signin_page(request: Request, next: str | None = None) -> Response:
    """The sign-in form."""
    if api_state(request).no_auth:
        return RedirectResponse("/", status_code=303)
    return render(request, "signin.html", viewer=None, next=_safe_next(next), problem=None)


@router.post("/signin")
async def signin(
    request: Request,
    key: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/",
) -> Response:
    """Sign in with an orbatch key: a session cookie for a working day, then the page asked for."""
    try:
        cookie = await start_session(request, key)
    except Unauthorized as refused:
        return render(
            request,
            "signin.html",
            status_code=401,
            viewer=None,
            next=_safe_next(next),
            problem=refused.message,
        )
    answer = RedirectResponse(_safe_next(next), status_code=303)
    answer.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=SESSION_SECONDS,
        httponly=True,
        # Lax: a link to a page from elsewhere opens it signed in; forms carry a token and are checked for origin.
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )
    return answer


@router.post("/signout")
async def signout(request: Request, token: Annotated[str | None, Form()] = None) -> Response:
    """Forget this browser's session."""
    viewer = await find_viewer(request)
    if viewer is not None:
        # Another site cannot sign a browser out either: the form must be this page's.
        check_form(request, viewer, token)
        await end_session(request)
    answer = RedirectResponse("/signin", status_code=303)
    answer.delete_cookie(SESSION_COOKIE, path="/")
    return answer
