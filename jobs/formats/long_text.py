"""Texts too long for a chain (`--long split`): a record's long field cut into overlapping chunks on natural
boundaries, each summarised by a call of its own, then the summaries combined (in groups, level after level,
when they do not fit one call), and the part of that plan a request asks next.

Everything here is a function of the record, the template, the chunk size (`request.split_tokens`) and the
answers already stored, so a worker recomputes the plan at each call instead of storing it: the chunks never
change, and a combine's groups depend only on answers that, once stored, never change either.

Tokens are counted as orbatch counts a model whose tokenizer it lacks (UTF-8 bytes / 3, `tokens.BYTES_PER_TOKEN`),
which errs high for prose in every tokenizer it was measured against: a chunk that fits by that count fits.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jobs.formats.prompt_template import Template
from jobs.formats.tokens import BYTES_PER_TOKEN, prompt_texts

__all__ = [
    "FINAL",
    "MIN_SPLIT_TOKENS",
    "Part",
    "SplitPlan",
    "combine_text",
    "long_field",
    "lookup",
    "next_part",
    "plan_split",
    "split_text",
    "text_tokens",
    "with_field",
]

# The name of the call whose answer is the record's result.
FINAL = "final"
# A chunk holds at least this many tokens of text: a window that leaves less beside the template and the
# completion bound cannot summarise the record usefully, and the record stays a bad line.
MIN_SPLIT_TOKENS = 64
# Consecutive chunks share about this share of a chunk (whole sentences, or words in a sentence longer than
# that), so a sentence cut at a chunk's end is read whole at the next one's start.
OVERLAP_SHARE = 0.1
# What a split request leaves unused of the smallest window of its chain: a twentieth of it, at least 16
# tokens, for the difference between orbatch's count and the model's.
MARGIN_SHARE = 0.05
MIN_MARGIN_TOKENS = 16

# Paragraphs are separated by a blank line; a sentence ends with . ! ? (or …) and whitespace.
_PARAGRAPH = re.compile(r"(\n[ \t]*\n\s*)")
_SENTENCE = re.compile(r"(?<=[.!?\u2026])(\s+)")
_WORD = re.compile(r"\S+\s*|\s+")

_COMBINE_HEAD = (
    "[Not the document itself: {count} summaries of consecutive parts of one document, in order. Answer as for "
    "the whole document.]"
)


def text_tokens(text: str) -> int:
    """A text's tokens as orbatch counts them for a split: its UTF-8 bytes / 3, rounded up."""
    size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    return math.ceil(size / BYTES_PER_TOKEN)


@dataclass(slots=True, frozen=True)
class _Atom:
    """A piece of the text that is never cut: a sentence (a word, for a sentence too long for a chunk), with
    the whitespace after it; `ends_paragraph` when a paragraph ends with it."""

    text: str
    tokens: int
    ends_paragraph: bool


def _hard_cut(word: str, limit: int) -> list[str]:
    """A word longer than a chunk, cut every so many characters (four bytes at most each)."""
    step = max(1, limit * BYTES_PER_TOKEN // 4)
    return [word[i : i + step] for i in range(0, len(word), step)]


def _atoms(text: str, limit: int) -> list[_Atom]:
    """The text as sentences (words, in a sentence over `limit` tokens), each with its trailing whitespace."""
    atoms: list[_Atom] = []
    pieces = _PARAGRAPH.split(text)
    # re.split with a group alternates paragraph, separator, paragraph...
    for index in range(0, len(pieces), 2):
        paragraph = pieces[index] + (pieces[index + 1] if index + 1 < len(pieces) else "")
        if not paragraph:
            continue
        sentences = _SENTENCE.split(paragraph)
        units = [
            sentences[i] + (sentences[i + 1] if i + 1 < len(sentences) else "")
            for i in range(0, len(sentences), 2)
        ]
        units = [u for u in units if u]
        for position, unit in enumerate(units):
            last = position == len(units) - 1
            if text_tokens(unit) <= limit:
                atoms.append(_Atom(unit, text_tokens(unit), last))
                continue
            words = [
                w
                for word in _WORD.findall(unit)
                for w in (_hard_cut(word, limit) if text_tokens(word) > limit else [word])
            ]
            for n, word in enumerate(words):
                atoms.append(_Atom(word, text_tokens(word), last and n == len(words) - 1))
    return atoms


def split_text(text: str, limit: int) -> list[str]:
    """The text in chunks of at most `limit` tokens, each ending at a paragraph's end when one lies in its second
    half, else at a sentence's (a word's, inside a sentence longer than a chunk), each but the first starting
    with the last sentences of the one before (about a tenth of a chunk)."""
    if limit < 1:
        raise ValueError("a chunk holds at least one token")
    atoms = _atoms(text, limit)
    overlap = int(limit * OVERLAP_SHARE)
    chunks: list[str] = []
    start = 0
    while start < len(atoms):
        end, used = start, 0
        while end < len(atoms) and used + atoms[end].tokens <= limit:
            used += atoms[end].tokens
            end += 1
        if end < len(atoms):
            # Prefer a paragraph's end, if one lies in the chunk's second half.
            half, running = used / 2, 0
            best = None
            for i in range(start, end):
                running += atoms[i].tokens
                if atoms[i].ends_paragraph and running >= half:
                    best = i + 1
            if best is not None:
                end = best
        chunks.append("".join(a.text for a in atoms[start:end]))
        if end >= len(atoms):
            break
        # The next chunk starts with the last atoms of this one, up to the overlap, and always moves on.
        back, shared = end, 0
        while back - 1 > start and shared + atoms[back - 1].tokens <= overlap:
            back -= 1
            shared += atoms[back].tokens
        start = back
    return chunks


def lookup(record: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    """The value at a dotted field's path in the record; None when it has none."""
    value: Any = record
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def long_field(
    template: Template, record: Mapping[str, Any], named: str | None = None
) -> tuple[str, ...] | None:
    """The field of the record a split cuts: `named` (`--long-field`), else the longest string among the fields
    the template uses (the first of equals); None when the template uses no string field."""
    if named is not None:
        path = tuple(named.split("."))
        return path if named in template.fields and isinstance(lookup(record, path), str) else None
    best: tuple[str, ...] | None = None
    size = -1
    for name in template.fields:
        path = tuple(name.split("."))
        value = lookup(record, path)
        if isinstance(value, str) and len(value) > size:
            best, size = path, len(value)
    return best


def with_field(record: Mapping[str, Any], path: tuple[str, ...], value: str) -> dict[str, Any]:
    """A copy of the record with the field at `path` set to `value`."""
    out = dict(record)
    if len(path) == 1:
        out[path[0]] = value
    else:
        inner = out.get(path[0])
        out[path[0]] = with_field(inner if isinstance(inner, Mapping) else {}, path[1:], value)
    return out


def combine_text(summaries: list[str]) -> str:
    """What a combining call reads in place of the long field: a stated instruction, then the numbered summaries."""
    numbered = "\n\n".join(f"Part {i}:\n{s.strip()}" for i, s in enumerate(summaries, 1))
    return f"{_COMBINE_HEAD.format(count=len(summaries))}\n\n{numbered}"


def _cut(summary: str, limit: int) -> str:
    """A summary cut (at a word) to `limit` tokens, so that a group always holds two."""
    if text_tokens(summary) <= limit:
        return summary
    words = _WORD.findall(summary)
    out, used = [], 0
    for word in words:
        if used + text_tokens(word) > limit:
            break
        out.append(word)
        used += text_tokens(word)
    return "".join(out) if out else summary[: max(1, limit * BYTES_PER_TOKEN // 4)]


def _groups(summaries: list[str], limit: int) -> list[list[str]]:
    """Consecutive summaries in groups whose combined text fits `limit` tokens, two at least in each but the last
    (a summary too long for half a group is cut to it), so every level has fewer texts than the one before."""
    half = max(1, (limit - text_tokens(combine_text(["", ""]))) // 2)
    fitted = [_cut(s, half) for s in summaries]
    groups: list[list[str]] = []
    current: list[str] = []
    for summary in fitted:
        if len(current) >= 2 and text_tokens(combine_text([*current, summary])) > limit:
            groups.append(current)
            current = []
        current.append(summary)
    if current:
        groups.append(current)
    return groups


@dataclass(slots=True, frozen=True)
class Part:
    """The next call of a split request: its name (`chunk 2/7`, `combine 1.2/3`, `final`) and the text that
    takes the long field's place in the template."""

    name: str
    text: str

    @property
    def final(self) -> bool:
        return self.name == FINAL


def next_part(text: str, limit: int, answers: Mapping[str, str]) -> Part:
    """The first part of the text's plan not yet answered (`answers`: part name to its answer): the chunks in
    order, then each level's combines, then the final call, which combines what fits into one call."""
    chunks = split_text(text, limit)
    if len(chunks) == 1:
        return Part(FINAL, chunks[0])
    summaries: list[str] = []
    for i, chunk in enumerate(chunks, 1):
        name = f"chunk {i}/{len(chunks)}"
        if name not in answers:
            return Part(name, chunk)
        summaries.append(answers[name])
    level = 1
    while True:
        whole = combine_text(summaries)
        if text_tokens(whole) <= limit:
            return Part(FINAL, whole)
        groups = _groups(summaries, limit)
        if len(groups) == 1:
            return Part(FINAL, combine_text(groups[0]))
        # A last group of one summary is not a call: the summary goes on to the next level as it is.
        calls = [group for group in groups if len(group) > 1]
        summaries = []
        number = 0
        for group in groups:
            if len(group) == 1:
                summaries.append(group[0])
                continue
            number += 1
            name = f"combine {level}.{number}/{len(calls)}"
            if name not in answers:
                return Part(name, combine_text(group))
            summaries.append(answers[name])
        level += 1


@dataclass(slots=True, frozen=True)
class SplitPlan:
    """How a record too long for its chain is split, as submit decides it: the chunk size, what its largest part
    asks of a model's context, and roughly what all its parts send (for the estimate)."""

    split_tokens: int
    context_needed: int
    calls: int
    prompt_tokens: int


def _overhead(template: Template, record: Mapping[str, Any], path: tuple[str, ...]) -> int:
    """The tokens of a part's prompt but its long field: the template, the other fields, the messages' framing."""
    texts, fixed = prompt_texts(template.body(with_field(record, path, "")))
    return fixed + sum(text_tokens(t) for t in texts)


def plan_split(
    template: Template,
    record: Mapping[str, Any],
    window: int,
    completion: int | None,
    named: str | None = None,
) -> SplitPlan | str:
    """The split of a record for a chain whose smallest window is `window` tokens, or why there is none: the chunk
    size is the window less the template's own tokens, the completion bound and a margin."""
    path = long_field(template, record, named)
    if path is None:
        field = (
            f"no string field {named!r} that the template uses"
            if named
            else "no string field the template uses"
        )
        return f"it has {field} to split"
    margin = max(MIN_MARGIN_TOKENS, int(window * MARGIN_SHARE))
    overhead = _overhead(template, record, path)
    split = window - overhead - (completion or 0) - margin
    if split < MIN_SPLIT_TOKENS:
        return (
            f"even a part of it cannot fit: the template's own ~{overhead} tokens, the max_tokens "
            f"({completion or 0}) and a margin of {margin} leave {max(split, 0)} of a {window}-token window for "
            f"the text (at least {MIN_SPLIT_TOKENS} are needed)"
        )
    value = lookup(record, path)
    text = value if isinstance(value, str) else ""
    total = text_tokens(text)
    chunks = max(1, math.ceil(total / (split * (1 - OVERLAP_SHARE))))
    # Each combine takes at least two texts: chunks - 1 combines at most, fewer when summaries are short.
    # A summary of `completion` tokens of the model's, as counted here (a token is about four bytes of prose,
    # counted as three), with its `Part N:` label; a combine's room less its note.
    summary = (completion * 4 // 3 if completion else split // 4) + 4
    per_combine = max(2, (split - text_tokens(combine_text([]))) // summary)
    combines = max(1, math.ceil((chunks - 1) / max(1, per_combine - 1))) if chunks > 1 else 0
    calls = chunks + combines
    prompt = (
        int(total * (1 + OVERLAP_SHARE)) + calls * overhead + combines * min(split, per_combine * summary)
    )
    return SplitPlan(split, overhead + split + (completion or 0), calls, prompt)
