"""`python -m jobs.simulator` serves the OpenRouter simulator (`orbatch simulator` does the same)."""

from jobs.simulator.main import simulator_main

__all__: list[str] = []

simulator_main()
