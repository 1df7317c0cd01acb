"""Test doubles for trials, tests and benches: the OpenRouter simulator on loopback HTTP, and a TCP fault proxy.
Imports the core and the formats only; only the CLI imports it."""

__all__: list[str] = []
