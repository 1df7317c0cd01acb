"""Taking work in: the model catalogue, storing a batch from a file, the one intake every surface uses.
Imports scheduling and below."""

__all__: list[str] = []
