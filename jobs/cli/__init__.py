"""The `orbatch` command line: commands, `run`, `serve`, what a terminal shows.

Layer rule: may import every layer below it; only the Python front (`jobs.library`) imports it, for the services,
the simulator and the in-process worker that `orbatch run` uses.
"""

from jobs.cli.app import app, main

__all__ = ["app", "main"]
