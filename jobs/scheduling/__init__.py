"""From Postgres to the queue: the arq queue, the fleet's shared state in Redis, fair order, the feeder, the live
workers' roster, and every status change (the lifecycle). Imports the formats, the services and the core only."""

__all__: list[str] = []
