"""`python -m jobs` runs the orbatch CLI."""

from jobs.cli import main

__all__: list[str] = []

main()
