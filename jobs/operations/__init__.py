"""Acting on stored batches: steering them (cancel, retry, resume, priority) and exporting their results."""

__all__: list[str] = []
