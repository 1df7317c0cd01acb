"""Pages rendered from the package's Jinja2 templates, every value escaped, with the headers a page needs."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from jobs.core.errors import OrbatchError, Unauthorized
from jobs.observation.eta import format_duration

__all__ = ["LIVE_HEADER", "error_page", "render", "wants_page"]

# Pages ask for their fresh part this often while open and visible; each ask is a few indexed reads.
PAGE_REFRESH_SECONDS = 2
# An error's latest message as a page shows it: enough for any provider's sentence, not a whole echoed body.
PAGE_MESSAGE_CHARS = 500

# A page's script asks for the part that changes with this header, and swaps it in without a reload.
LIVE_HEADER = "x-orbatch-live"

# Scripts and styles only from this server, no frames, forms only to it: a batch name or an error message
# that slipped past escaping still could not run or send anything anywhere.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _money(value: Decimal | float | int | None) -> str:
    if value is None:
        return "—"
    amount = Decimal(value)
    return f"${amount:,.4f}" if amount >= Decimal("0.01") or amount == 0 else f"${amount:.6f}"


def _count(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _when(moment: datetime | None) -> str:
    return "—" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def _rate(per_second: float | None) -> str:
    if per_second is None:
        return "—"
    return f"{per_second:.2f}/s" if per_second >= 1 else f"{per_second * 60:.1f}/min"


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("jobs.api.pages", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.filters.update(money=_money, count=_count, when=_when, rate=_rate, duration=format_duration)
_ENV.globals.update(refresh_seconds=PAGE_REFRESH_SECONDS, message_chars=PAGE_MESSAGE_CHARS)


# Query words that say what an action just did, or that a page was asked for by a batch's name: shown once, then
# left out of the page's address and refreshes.
_ONCE = frozenset({"notice", "problem", "by"})


def _live_url(request: Request) -> str:
    """The page's own address without the words of a finished action, for its refreshes and its address bar."""
    kept = urlencode([(k, v) for k, v in request.query_params.multi_items() if k not in _ONCE])
    return request.url.path + (f"?{kept}" if kept else "")


def render(request: Request, name: str, status_code: int = 200, **values: Any) -> Response:
    """The page `name` (or only its live part, when the page's script asks), with the page headers."""
    template = _ENV.get_template(name)
    values = {"request": request, "path": request.url.path, "live_url": _live_url(request), **values}
    if request.headers.get(LIVE_HEADER) and "live" in template.blocks:
        body = "".join(template.blocks["live"](template.new_context(values)))
    else:
        body = template.render(values)
    return HTMLResponse(body, status_code=status_code, headers=_HEADERS)


def wants_page(request: Request) -> bool:
    """Whether an error on this request is answered as a page: a dashboard path asked for by a browser."""
    path = request.url.path
    if path.startswith(("/v1/", "/metrics", "/openapi.json", "/docs", "/redoc")) or path == "/v1":
        return False
    return "text/html" in request.headers.get("accept", "") or request.headers.get(LIVE_HEADER) is not None


def error_page(request: Request, error: OrbatchError) -> Response:
    """The error as a page; a browser without a session is sent to sign in instead of shown a 401."""
    if isinstance(error, Unauthorized) and not request.headers.get("authorization"):
        # Back to the page asked for, with its query (a list's cursor, say); a form's POST goes back to the list.
        target = _live_url(request) if request.method in ("GET", "HEAD") else "/"
        return RedirectResponse(f"/signin?next={quote(target, safe='/')}", status_code=303, headers=_HEADERS)
    return render(request, "error.html", status_code=error.http_status, error=error, viewer=None)
