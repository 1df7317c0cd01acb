"""The dashboard's stylesheet and script, served from the package (no build step, no CDN)."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

__all__ = ["mount_static"]

_FILES = Path(__file__).with_name("static")


def mount_static(app: FastAPI) -> None:
    """Serve the dashboard's assets under `/static`."""
    app.mount("/static", StaticFiles(directory=_FILES), name="static")
