"""`orbatch serve`: OpenAI's Files and Batches API over orbatch's Postgres and Redis, one owner per key."""

from __future__ import annotations

__all__: list[str] = []
