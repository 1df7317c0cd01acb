"""orbatch's submitting side: input formats, the database model, submission, export and the CLI."""

__all__: list[str] = []
