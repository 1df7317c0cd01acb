"""`python -m jobs` runs the orbatch CLI."""

from jobs.cli import main

main()
