"""orbatch's executing side: the arq worker, the OpenRouter client, the throttle and the task. Imports every layer
of `jobs/` below the API; never the API or the CLI."""

__all__: list[str] = []
