"""orbatch's executing side: the arq worker, the OpenRouter client, the throttle and the task."""

__all__: list[str] = []
