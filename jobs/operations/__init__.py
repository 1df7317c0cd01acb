"""Acting on stored batches: steering them (cancel, retry, resume, priority) and exporting their results.
Imports observation and below."""

__all__: list[str] = []
