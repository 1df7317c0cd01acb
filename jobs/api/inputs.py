"""What a request may carry, checked in one place: text in UTF-8, without NUL, of a sane length.

Postgres refuses NUL in text, a percent-encoded byte that is not UTF-8 (`%ff`) would reach a query as U+FFFD,
and a cursor or an id of 100 kB is nobody's. `checked_request`, a dependency of the whole app, holds every path
parameter, query parameter and header of a routed request to that rule before any route reads it; the `Text`
type does the same for the strings of a JSON body (`schemas.py`), and `checked_text` for an upload's fields.
A breach is a 400 naming the parameter, in OpenAI's words (`Invalid value for 'after': ...`).
"""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import unquote_to_bytes

from fastapi import Request
from pydantic import AfterValidator, Strict, StringConstraints
from pydantic_core import PydanticCustomError

from jobs.core.errors import BadInput

__all__ = [
    "MAX_TEXT_CHARS",
    "NO_NUL",
    "Text",
    "check_query",
    "checked_request",
    "checked_text",
    "shown_name",
]

# Longer than any id, cursor, name, URL or word orbatch takes (ids are about 30 characters, a batch's name at
# most 512); a metadata value has its own, shorter bound.
MAX_TEXT_CHARS = 2048
# A parameter's name as an error shows it back.
_NAME_CHARS = 64
_NUL = "it contains a NUL character (\\u0000), which no text orbatch takes may hold"


def _problem(value: str) -> str | None:
    """Why a text a client sent cannot be taken, or None."""
    if "\x00" in value:
        return _NUL
    if len(value) > MAX_TEXT_CHARS:
        return f"it is {len(value)} characters long, and at most {MAX_TEXT_CHARS} are taken"
    return None


def shown_name(name: str) -> str:
    """A parameter's name as the client sent it, safe to show back: control characters escaped, cut short."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in name[:_NAME_CHARS])[:_NAME_CHARS]


def _refused(param: str, problem: str) -> BadInput:
    return BadInput(f"Invalid value for '{param}': {problem}.", param=param, code="invalid_value")


def checked_text(raw: bytes | str, param: str) -> str:
    """The text of `raw` (bytes as UTF-8); BadInput naming `param` when it is not text orbatch takes."""
    if isinstance(raw, bytes):
        try:
            value = raw.decode()
        except UnicodeDecodeError:
            raise _refused(
                param, "it is not valid UTF-8 (a percent-encoded byte such as %ff is not a character)"
            ) from None
    else:
        value = raw
    problem = _problem(value)
    if problem is not None:
        raise _refused(param, problem)
    return value


def check_query(query: bytes) -> None:
    """BadInput naming the first parameter of a raw query string (`a=1&b=2`) whose name or value is not text
    orbatch takes; decoded here, as the URL's own decoding turns `%ff` into U+FFFD."""
    for piece in query.split(b"&"):
        if piece:
            raw_name, _, raw_value = piece.partition(b"=")
            name = unquote_to_bytes(raw_name.replace(b"+", b" "))
            shown = shown_name(name.decode(errors="backslashreplace"))
            checked_text(name, shown)
            checked_text(unquote_to_bytes(raw_value.replace(b"+", b" ")), shown)


def _path_params(request: Request) -> dict[str, bytes]:
    """The route's path parameters as the client encoded them: the URL decodes `%ff` to U+FFFD, so each is taken
    from the raw path by the route's own pattern (searched for, as a router's prefix is not part of it)."""
    raw_path: bytes = request.scope.get("raw_path") or request.scope["path"].encode()
    pattern = getattr(request.scope.get("route"), "path_regex", None)
    match = (
        None if pattern is None else re.search(pattern.pattern.removeprefix("^"), raw_path.decode("latin-1"))
    )
    if match is None:
        return {name: str(value).encode() for name, value in request.path_params.items()}
    return {name: unquote_to_bytes(value) for name, value in match.groupdict().items()}


async def checked_request(request: Request) -> None:
    """BadInput (400) for a path or query parameter, or a header, that is not text orbatch takes."""
    for name, value in _path_params(request).items():
        checked_text(value, name)
    check_query(request.scope.get("query_string", b""))
    for raw_name, value in request.scope["headers"]:
        # Headers are Latin-1 by HTTP's rules, and bounded by the server (protocol.py): only NUL is refused.
        if b"\x00" in value:
            raise _refused(shown_name(raw_name.decode("latin-1")), _NUL)


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise PydanticCustomError("invalid_text", _NUL)
    return value


# Pydantic's check of a string field: no NUL in it (its length is bounded by its own StringConstraints, which
# the OpenAPI document shows).
NO_NUL = AfterValidator(_no_nul)

# A string field of a JSON body: a string (never a number taken for one), held to the same rule.
Text = Annotated[str, Strict(), StringConstraints(max_length=MAX_TEXT_CHARS), NO_NUL]
