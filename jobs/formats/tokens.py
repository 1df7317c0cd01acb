"""A chat request's prompt tokens, counted with its model's tokenizer where orbatch has it, else estimated.

The encodings are those of `toktok` (OpenAI's cl100k_base, o200k_base and o200k_harmony, Qwen3.5's), compiled
into its wheel: nothing is downloaded at run time. Messages are framed as OpenAI counts them (three tokens a
message, one for a name, three priming the reply); a requested JSON schema and tools count as their JSON text.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import orjson
import toktok

__all__ = [
    "APPROXIMATION_MARGIN",
    "IMAGE_TOKENS",
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
# Models whose tokenizer orbatch lacks are counted with o200k_base and this margin: o200k_base has one of the
# largest vocabularies, and the others (Claude's, Gemini's, Llama's, Mistral's) are taken to split text into up
# to about 30 % more tokens, so the estimate errs high rather than low.
APPROXIMATION_MARGIN = 1.3
_BASE = "o200k_base"


@dataclass(slots=True, frozen=True)
class Tokenizer:
    """The encoding a model's prompts are counted with, and whether it is the model's own."""

    encoding: str
    exact: bool

    def describe(self) -> str:
        """`o200k_base`, or `approximate (o200k_base + 30 %)`."""
        if self.exact:
            return self.encoding
        return f"approximate ({self.encoding} + {round((APPROXIMATION_MARGIN - 1) * 100)} %)"


@functools.lru_cache(maxsize=1024)
def tokenizer_for(model: str) -> Tokenizer:
    """The tokenizer of an OpenRouter model id (its `:free`, `:batch` or other variant named or not)."""
    vendor, _, name = model.partition("/")
    name = name.split(":", 1)[0]
    if vendor == "openai":
        if name.startswith("gpt-oss"):
            return Tokenizer("o200k_harmony", True)
        # tiktoken's own map: GPT-3.5 and GPT-4 (turbo included) are cl100k_base; GPT-4o, 4.1, 4.5, 5 and the
        # o-series are o200k_base.
        if name.startswith("gpt-3.5") or (
            name.startswith("gpt-4") and not name.startswith(("gpt-4o", "gpt-4."))
        ):
            return Tokenizer("cl100k_base", True)
        return Tokenizer(_BASE, True)
    if vendor == "qwen" and name.startswith("qwen3.5"):
        return Tokenizer("qwen3.5", True)
    return Tokenizer(_BASE, False)


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


def prompt_texts(body: dict[str, Any]) -> tuple[list[str], int]:
    """The texts of a chat body's prompt to count, and the tokens its framing adds to them."""
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
    None when it sets no bound."""
    cap = body.get("max_completion_tokens")
    if not isinstance(cap, int) or isinstance(cap, bool):
        cap = body.get("max_tokens")
    if not isinstance(cap, int) or isinstance(cap, bool) or cap < 0:
        return None
    choices = body.get("n")
    return cap * (
        choices if isinstance(choices, int) and not isinstance(choices, bool) and choices > 1 else 1
    )


class TokenCounter:
    """Counts many prompts with one call per tokenizer: `add` each request, then `counts` for them all.

    One call for thousands of prompts costs a fraction of one call each (the encoder's per-call overhead is
    about ten microseconds, the time of a short prompt's counting).
    """

    def __init__(self) -> None:
        self._texts: dict[str, list[str]] = {}
        # Per prompt added: its tokenizer, where its texts start and end in that tokenizer's list, its framing.
        self._prompts: list[tuple[Tokenizer, int, int, int]] = []

    def __len__(self) -> int:
        return len(self._prompts)

    def add(self, model: str, body: dict[str, Any]) -> None:
        """Count this body's prompt as `model` would read it (at the next `counts`)."""
        tokenizer = tokenizer_for(model)
        texts, fixed = prompt_texts(body)
        pool = self._texts.setdefault(tokenizer.encoding, [])
        start = len(pool)
        pool.extend(texts)
        self._prompts.append((tokenizer, start, len(pool), fixed))

    def counts(self) -> list[int]:
        """The prompt tokens of every request added since the last call, in the order they were added."""
        counted = {
            encoding: toktok.batch_count(texts, encoding, threads=1)
            for encoding, texts in self._texts.items()
        }
        out: list[int] = []
        for tokenizer, start, end, fixed in self._prompts:
            tokens = fixed + sum(counted[tokenizer.encoding][start:end])
            out.append(tokens if tokenizer.exact else math.ceil(tokens * APPROXIMATION_MARGIN))
        self._texts.clear()
        self._prompts.clear()
        return out
