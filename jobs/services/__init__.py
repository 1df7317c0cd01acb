"""The services a command runs on: embedded Postgres and Redis in a data dir, and watching them. Imports the core only."""

__all__: list[str] = []
