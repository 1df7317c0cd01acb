"""An OpenRouter simulator on loopback HTTP, for trials, tests and benches. Imports the core and the formats only."""

__all__: list[str] = []
