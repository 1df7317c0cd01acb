"""orbatch's layers below the worker and above it: core, services, formats, simulator, scheduling,
submission, observation, operations, then the API and the CLI on top (docs/design.md)."""

__all__: list[str] = []
