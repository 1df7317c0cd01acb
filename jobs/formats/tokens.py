"""A chat request's prompt tokens, counted with its model's tokenizer where orbatch has it, else estimated.

OpenAI's models are counted exactly with their encodings (cl100k_base, o200k_base) from `toktok`, which compiles
them into its wheel: nothing is downloaded at run time, as tiktoken would download them. Every other model is
estimated from the text's UTF-8 bytes, on the high side. Messages are framed as OpenAI counts them (three
tokens a message, one for a name, three priming the reply); a requested JSON schema and tools count as their
JSON text.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import toktok

__all__ = [
    "APPROXIMATE",
    "BYTES_PER_TOKEN",
    "IMAGE_TOKENS",
    "PIECE_CHARS",
    "TokenCounter",
    "Tokenizer",
    "completion_cap",
    "prompt_texts",
    "tokenizer_for",
]

# OpenAI's framing of a chat prompt (its cookbook's count for gpt-3.5-turbo-0613 and every model since): each
# message costs three tokens beyond its text, a `name` one more, and the reply is primed with three.
MESSAGE_TOKENS = 3
NAME_TOKENS = 1
REPLY_TOKENS = 3
# An image part, whose size a request does not say: what OpenAI charges for a 1024x1024 image at high detail
# (85 + 4 tiles of 170).
IMAGE_TOKENS = 765
# Models whose tokenizer orbatch lacks are counted as a token per this many UTF-8 bytes of text: English prose
# is 4 to 5 bytes a token with OpenAI's encodings and most others (Claude's, Gemini's, Llama's, Mistral's split
# it into up to about 30 % more tokens), code about 3.5, a CJK character (3 bytes) about one token; so 3 errs
# high for most text. Not an encoding: each costs 50 to 100 MB of memory once loaded, which a submit of
# other models' requests would pay for nothing.
BYTES_PER_TOKEN = 3
APPROXIMATE = "approximate"
# A text longer than this is counted at once, in pieces of this many characters cut before a space: the encoder
# keeps a scratch buffer the size of the longest text it was given (about 8 bytes a character, for good), and a
# chunk of a submit must not hold its long texts until the chunk is counted. A cut before a space is where the
# encodings split words anyway, so the count is the whole text's, give or take a token a piece.
PIECE_CHARS = 64 * 1024


@dataclass(slots=True, frozen=True)
class Tokenizer:
    """The encoding a model's prompts are counted with, or `approximate`, and whether it is the model's own."""

    encoding: str
    exact: bool

    def describe(self) -> str:
        """`o200k_base`, or `approximate (UTF-8 bytes / 3)`."""
        return self.encoding if self.exact else f"{APPROXIMATE} (UTF-8 bytes / {BYTES_PER_TOKEN})"


@functools.lru_cache(maxsize=1024)
def tokenizer_for(model: str) -> Tokenizer:
    """The tokenizer of an OpenRouter model id (its `:free`, `:batch` or other variant named or not)."""
    vendor, _, name = model.partition("/")
    name = name.split(":", 1)[0]
    if vendor != "openai":
        return Tokenizer(APPROXIMATE, exact=False)
    # tiktoken's own map: GPT-3.5, GPT-4 (turbo included) and the text-embedding models (ada-002, 3-small,
    # 3-large) are cl100k_base; GPT-4o, 4.1, 4.5, 5, the o-series and gpt-oss (o200k_harmony: o200k_base's ranks
    # and special tokens, which a prompt's text is not) are o200k_base.
    if name.startswith(("gpt-3.5", "text-embedding-")) or (
        name.startswith("gpt-4") and not name.startswith(("gpt-4o", "gpt-4."))
    ):
        return Tokenizer("cl100k_base", exact=True)
    return Tokenizer("o200k_base", exact=True)


@dataclass(slots=True)
class _Prompt:
    texts: list[str] = field(default_factory=list)
    fixed: int = REPLY_TOKENS


def _add_content(prompt: _Prompt, content: Any) -> None:
    if isinstance(content, str):
        prompt.texts.append(content)
        return
    if not isinstance(content, list):
        return
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            prompt.texts.append(part["text"])
        elif kind == "image_url":
            prompt.fixed += IMAGE_TOKENS
        else:
            # A file, audio or a part of a kind orbatch does not know: its JSON text, which errs high.
            prompt.texts.append(orjson.dumps(part).decode())


def _embedding_texts(value: Any) -> tuple[list[str], int]:
    """An embeddings input's texts, and its token ids counted as they are (no framing)."""
    items = (
        value if isinstance(value, list) and value and not all(isinstance(t, int) for t in value) else [value]
    )
    texts: list[str] = []
    fixed = 0
    for item in items:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, list):
            fixed += len(item)
    return texts, fixed


def prompt_texts(body: dict[str, Any]) -> tuple[list[str], int]:
    """The texts of a body's prompt to count (a chat body's messages, an embeddings body's input), and the
    tokens its framing adds to them."""
    if "input" in body and "messages" not in body:
        return _embedding_texts(body["input"])
    prompt = _Prompt()
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else []:
        if not isinstance(message, dict):
            continue
        prompt.fixed += MESSAGE_TOKENS
        role = message.get("role")
        if isinstance(role, str):
            prompt.texts.append(role)
        _add_content(prompt, message.get("content"))
        name = message.get("name")
        if isinstance(name, str):
            prompt.texts.append(name)
            prompt.fixed += NAME_TOKENS
        if message.get("tool_calls"):
            prompt.texts.append(orjson.dumps(message["tool_calls"]).decode())
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        # The schema reaches the model as text: its JSON is counted (its name, description and schema).
        prompt.texts.append(orjson.dumps(response_format.get("json_schema")).decode())
    for key in ("tools", "functions"):
        if body.get(key):
            prompt.texts.append(orjson.dumps(body[key]).decode())
    return prompt.texts, prompt.fixed


def completion_cap(body: dict[str, Any]) -> int | None:
    """The most completion tokens a body allows (`max_completion_tokens`, else `max_tokens`, times `n`);
    None when it sets no bound. An embeddings request completes nothing: 0."""
    if "input" in body and "messages" not in body:
        return 0
    cap = body.get("max_completion_tokens")
    if not isinstance(cap, int) or isinstance(cap, bool):
        cap = body.get("max_tokens")
    if not isinstance(cap, int) or isinstance(cap, bool) or cap < 0:
        return None
    choices = body.get("n")
    return cap * (
        choices if isinstance(choices, int) and not isinstance(choices, bool) and choices > 1 else 1
    )


def _approximate(text: str) -> int:
    """A text's tokens for a model whose tokenizer orbatch lacks, from its UTF-8 bytes."""
    size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    return math.ceil(size / BYTES_PER_TOKEN)


def _pieces(text: str) -> Iterator[str]:
    """The text in pieces of at most PIECE_CHARS, each (but the first) starting with the space it was cut at."""
    start = 0
    while len(text) - start > PIECE_CHARS:
        cut = text.rfind(" ", start + PIECE_CHARS // 2, start + PIECE_CHARS)
        if cut <= start:
            cut = start + PIECE_CHARS
        yield text[start:cut]
        start = cut
    yield text[start:]


class TokenCounter:
    """Counts many prompts with one call per encoding: `add` each request, then `counts` for them all.

    One call for thousands of prompts costs a fraction of one call each (the encoder's per-call overhead is
    about ten microseconds, the time a short prompt takes to count).
    """

    def __init__(self) -> None:
        self._texts: dict[str, list[str]] = {}
        # Per prompt added: its encoding, where its texts start and end in that encoding's list, and the tokens
        # known already (its framing, its long texts, every text of an approximate count).
        self._prompts: list[tuple[str, int, int, int]] = []

    def __len__(self) -> int:
        return len(self._prompts)

    def add(self, model: str, body: dict[str, Any]) -> None:
        """Count this body's prompt as `model` would read it (at the next `counts`)."""
        tokenizer = tokenizer_for(model)
        texts, known = prompt_texts(body)
        pool = self._texts.setdefault(tokenizer.encoding, [])
        start = len(pool)
        for text in texts:
            if not tokenizer.exact:
                known += _approximate(text)
            elif len(text) > PIECE_CHARS:
                known += sum(toktok.batch_count([p], tokenizer.encoding, threads=1)[0] for p in _pieces(text))
            else:
                pool.append(text)
        self._prompts.append((tokenizer.encoding, start, len(pool), known))

    def counts(self) -> list[int]:
        """The prompt tokens of every request added since the last call, in the order they were added."""
        counted = {
            encoding: toktok.batch_count(texts, encoding, threads=1)
            for encoding, texts in self._texts.items()
            if texts
        }
        out = [
            known + (sum(counted[encoding][start:end]) if end > start else 0)
            for encoding, start, end, known in self._prompts
        ]
        self._texts.clear()
        self._prompts.clear()
        return out
