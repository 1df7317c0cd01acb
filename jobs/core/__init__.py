"""The core: settings, constants, states, errors, logs, the database model and engine. Imports nothing of orbatch's."""

__all__: list[str] = []
