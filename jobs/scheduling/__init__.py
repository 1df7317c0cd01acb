"""From Postgres to the queue: the arq queue, the fleet's shared state in Redis, fair order, the feeder."""

__all__: list[str] = []
