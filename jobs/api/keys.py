"""API keys: made, listed and revoked by `orbatch keys`, stored only as their sha256, looked up per request."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from jobs.core.constants import API_KEY_PREFIX, CALLBACK_SECRET_PREFIX
from jobs.core.errors import BadInput, Conflict, NotFound

__all__ = [
    "Caller",
    "KeyInfo",
    "NewKey",
    "callback_secret",
    "caller_of_digest",
    "create_key",
    "digest",
    "find_caller",
    "list_keys",
    "revoke_key",
]

# An owner's name shows in commands, logs and the CLI's lists: a plain identifier, not free text.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
# The part of a key kept to tell keys apart in a list: the prefix and six random characters.
_HINT_CHARS = len(API_KEY_PREFIX) + 6


@dataclass(slots=True, frozen=True)
class NewKey:
    """A key just made: shown once, never stored as it is."""

    name: str
    key: str
    callback_secret: str


@dataclass(slots=True, frozen=True)
class KeyInfo:
    """What `orbatch keys list` shows of a key."""

    name: str
    hint: str
    rate_per_minute: int | None
    created_at: datetime
    revoked_at: datetime | None


@dataclass(slots=True, frozen=True)
class Caller:
    """Who a request acts as: the owner of what it reads and makes, and that owner's request rate."""

    owner: str
    rate_per_minute: int | None


def digest(key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise BadInput(
            f"{name!r} cannot name a key: use 1 to 64 letters, digits, '.', '_', '@' or '-', starting with a "
            "letter or digit",
            param="name",
        )


_CREATE = text(
    """
    INSERT INTO api_key (name, digest, hint, callback_secret, rate_per_minute)
    VALUES (:name, :digest, :hint, :secret, :rate)
    ON CONFLICT (name) DO UPDATE SET digest = excluded.digest, hint = excluded.hint,
        callback_secret = excluded.callback_secret, rate_per_minute = excluded.rate_per_minute,
        created_at = now(), revoked_at = NULL
    WHERE api_key.digest IS NULL
    RETURNING name
    """
)


async def create_key(engine: AsyncEngine, name: str, rate_per_minute: int | None = None) -> NewKey:
    """A new key for the owner NAME (again after a revoke: the owner's files and batches stay its own).

    Conflict when NAME already has a live key: one key per owner, so a revoke is what replaces it.
    """
    _check_name(name)
    if rate_per_minute is not None and rate_per_minute < 1:
        raise BadInput(f"--rate-limit must be at least 1 request a minute, got {rate_per_minute}")
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    secret = CALLBACK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()
    async with engine.begin() as conn:
        made = (
            await conn.execute(
                _CREATE,
                {
                    "name": name,
                    "digest": digest(key),
                    "hint": key[:_HINT_CHARS],
                    "secret": secret,
                    "rate": rate_per_minute,
                },
            )
        ).one_or_none()
    if made is None:
        raise Conflict(
            f"{name!r} already has a key; `orbatch keys revoke {name}` first to replace it", param="name"
        )
    return NewKey(name, key, secret)


async def list_keys(engine: AsyncEngine) -> list[KeyInfo]:
    """Every owner's key, live and revoked, by name."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT name, hint, rate_per_minute, created_at, revoked_at FROM api_key ORDER BY name")
        )
        return [KeyInfo(r.name, r.hint, r.rate_per_minute, r.created_at, r.revoked_at) for r in rows]


async def revoke_key(engine: AsyncEngine, name: str) -> None:
    """Revoke NAME's key at once: its next request is a 401. What the owner made stays."""
    async with engine.begin() as conn:
        revoked = (
            await conn.execute(
                text(
                    "UPDATE api_key SET digest = NULL, revoked_at = now()"
                    " WHERE name = :name AND digest IS NOT NULL RETURNING name"
                ),
                {"name": name},
            )
        ).one_or_none()
        if revoked is not None:
            return
        known = (
            await conn.execute(text("SELECT 1 FROM api_key WHERE name = :name"), {"name": name})
        ).one_or_none()
    if known is None:
        raise NotFound(f"no key named {name!r}: `orbatch keys list` shows them", param="name")
    raise Conflict(f"{name!r}'s key was already revoked", param="name")


async def find_caller(conn: AsyncConnection, key: str) -> Caller | None:
    """The owner a live key acts as; None for an unknown or revoked key."""
    return await caller_of_digest(conn, digest(key))


async def caller_of_digest(conn: AsyncConnection, key_digest: str) -> Caller | None:
    """The owner of the live key with this digest (a signed-in browser's); None once it is revoked."""
    row = (
        await conn.execute(
            text("SELECT name, rate_per_minute FROM api_key WHERE digest = :digest"), {"digest": key_digest}
        )
    ).one_or_none()
    return None if row is None else Caller(row.name, row.rate_per_minute)


async def callback_secret(conn: AsyncConnection, owner: str) -> str | None:
    """The secret that signs an owner's callbacks; None for an owner that never had a key."""
    return (
        await conn.execute(text("SELECT callback_secret FROM api_key WHERE name = :name"), {"name": owner})
    ).scalar_one_or_none()
