"""What goes in and comes out: input lines, prompt templates, JSON schemas of replies, output lines. Imports the core only."""

__all__: list[str] = []
