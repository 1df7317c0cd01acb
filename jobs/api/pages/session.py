"""Who views a page: a browser signed in with its key (a session cookie), a script's Bearer key, or anyone on a
`--no-auth` loopback server; and the checks a form posted from a page must pass."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson
from fastapi import Request
from redis.exceptions import RedisError

from jobs.api.auth import authorized
from jobs.api.keys import caller_of_digest, digest, find_caller
from jobs.api.state import ApiState, api_state
from jobs.core.constants import API_KEY_PREFIX, NO_AUTH_OWNER, SESSION_COOKIE, SESSION_KEY, SESSION_SECONDS
from jobs.core.errors import Forbidden, ServiceUnavailable, Unauthorized

__all__ = ["Viewer", "check_form", "end_session", "find_viewer", "start_session"]


@dataclass(slots=True, frozen=True)
class Viewer:
    """The owner a page is shown to, and the token its forms carry back (none for a Bearer key's request)."""

    owner: str
    form_token: str | None
    # Signed in through the form: the page offers to sign out.
    signed_in: bool = False
    # The operator of a `--no-auth` loopback server, who sees every batch (the CLI's too); never a key's owner,
    # whatever the key is named.
    sees_all: bool = False

    @property
    def scope(self) -> str | None:
        """The owner whose batches the pages read; None for every batch."""
        return None if self.sees_all else self.owner


def _session_key(state: ApiState, cookie: str) -> str:
    # The cookie is stored hashed: a reader of Redis cannot sign in with what it finds there.
    return SESSION_KEY.format(
        queue=state.settings.queue_name, digest=hashlib.sha256(cookie.encode()).hexdigest()
    )


async def find_viewer(request: Request) -> Viewer | None:
    """The viewer of this request, or None when it must sign in first.

    A Bearer header is checked as the API checks it (a wrong key is a 401, not a sign-in page).
    """
    state = api_state(request)
    if state.no_auth:
        return Viewer(NO_AUTH_OWNER, state.form_token, sees_all=True)
    if request.headers.get("authorization"):
        return Viewer((await authorized(request)).owner, None)
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    try:
        raw = await state.redis.get(_session_key(state, cookie))
    except RedisError as exc:
        raise ServiceUnavailable(
            "orbatch cannot reach Redis, where sign-ins are kept; try again shortly",
            code="service_unavailable",
        ) from exc
    if raw is None:
        return None
    session = orjson.loads(raw)
    async with state.reads.connect() as conn:
        caller = await caller_of_digest(conn, session["key"])
    # A revoked key ends its sessions at their next page.
    return None if caller is None else Viewer(caller.owner, session["form"], signed_in=True)


async def start_session(request: Request, key: str) -> str:
    """A new session for a live key: the cookie's value; Unauthorized for any other key, Forbidden for a form
    posted from another site (which would sign the browser in as someone else)."""
    state = api_state(request)
    if not _same_origin(request):
        raise _foreign_form()
    key = key.strip()
    caller = None
    if key.startswith(API_KEY_PREFIX):
        async with state.reads.connect() as conn:
            caller = await find_caller(conn, key)
    if caller is None:
        raise Unauthorized(
            "That key is not a live orbatch key. Keys are made, listed and revoked with `orbatch keys`.",
            code="invalid_api_key",
        )
    # A session the browser already had ends: a cookie planted before signing in is never the one used after.
    await end_session(request)
    cookie = secrets.token_urlsafe(32)
    session = {"key": digest(key), "form": secrets.token_urlsafe(32)}
    await state.redis.set(_session_key(state, cookie), orjson.dumps(session), ex=SESSION_SECONDS)
    return cookie


async def end_session(request: Request) -> None:
    """Forget this browser's session, if it has one."""
    state = api_state(request)
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        await state.redis.delete(_session_key(state, cookie))


def _foreign_form() -> Forbidden:
    return Forbidden(
        "This form did not come from this orbatch page (or the page is too old): reload the page and try again.",
        code="bad_form_token",
    )


def _same_origin(request: Request) -> bool:
    # Browsers send Sec-Fetch-Site, and Origin with every POST; a form from another site says so in both.
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return urlsplit(origin).netloc.lower() == request.headers.get("host", "").lower()


def check_form(request: Request, viewer: Viewer, token: str | None) -> None:
    """Forbidden unless a posted form came from this site's own page: same origin, with the viewer's token."""
    if viewer.form_token is None:
        # A Bearer header is set by a script, never by a browser posting a form on another site's behalf.
        return
    if not _same_origin(request) or not hmac.compare_digest(
        (token or "").encode(), viewer.form_token.encode()
    ):
        raise Forbidden(
            "This form did not come from this orbatch page (or the page is too old): reload the page and try "
            "again.",
            code="bad_form_token",
        )
