"""Taking work in: the model catalogue, storing a batch from a file, the one intake every surface uses."""

__all__: list[str] = []
