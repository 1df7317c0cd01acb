"""The HTTP API and the dashboard: OpenAI's Files and Batches API over orbatch's Postgres and Redis, one owner
per key. Imports the layers below it; never `jobs.cli` (which serves it)."""

from __future__ import annotations

__all__: list[str] = []
