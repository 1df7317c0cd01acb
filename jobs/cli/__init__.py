"""The `orbatch` command line, on top of every other layer: commands, `run`, `serve`, what a terminal shows."""

from jobs.cli.app import app, main

__all__ = ["app", "main"]
