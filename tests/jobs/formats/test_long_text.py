"""Splitting a text too long for its chain (`--long split`): chunks on natural boundaries with overlap, and the
plan of parts (chunks, combines, the final call) a request asks for one at a time."""

from __future__ import annotations

import itertools

from jobs.formats.long_text import (
    FINAL,
    MIN_SPLIT_TOKENS,
    SplitPlan,
    combine_text,
    long_field,
    next_part,
    plan_split,
    split_text,
    text_tokens,
    with_field,
)
from jobs.formats.prompt_template import Template


def paragraphs(count: int, sentences: int) -> str:
    return "\n\n".join(
        " ".join(f"Paragraph {p} sentence {s} says a few words." for s in range(sentences))
        for p in range(count)
    )


def test_a_text_that_fits_is_one_chunk_and_the_chunks_rebuild_the_text_with_overlaps() -> None:
    assert split_text("A short text.", 100) == ["A short text."]
    text = paragraphs(10, 12)
    chunks = split_text(text, 120)
    assert len(chunks) > 5
    assert all(text_tokens(c) <= 120 for c in chunks)
    # Each chunk is a piece of the text, in order, and together they cover it.
    position = 0
    for chunk in chunks:
        found = text.find(chunk, max(0, position - len(chunk)))
        assert found >= 0
        assert found <= position, "no text is skipped between two chunks"
        position = found + len(chunk)
    assert position == len(text)


def test_chunks_end_at_a_paragraph_when_one_is_in_reach_else_at_a_sentence() -> None:
    text = paragraphs(10, 5)  # paragraphs of about 80 tokens: two do not fit in 120
    for chunk in split_text(text, 120)[:-1]:
        assert chunk.endswith("\n\n"), chunk[-40:]
    long_paragraphs = paragraphs(3, 40)  # a paragraph is longer than a chunk: cut after a sentence
    for chunk in split_text(long_paragraphs, 120)[:-1]:
        assert chunk.rstrip().endswith("words."), chunk[-40:]


def test_consecutive_chunks_share_whole_sentences() -> None:
    text = paragraphs(2, 60)
    chunks = split_text(text, 200)
    assert len(chunks) > 2
    for before, after in itertools.pairwise(chunks):
        shared = next((k for k in range(len(after), 0, -1) if before.endswith(after[:k])), 0)
        # About a tenth of a chunk, in whole sentences.
        assert 10 <= text_tokens(after[:shared]) <= 20, after[:shared]
        assert after[:shared].rstrip().endswith("words.")
        assert after[:shared].startswith("Paragraph")


def test_a_sentence_longer_than_a_chunk_is_cut_between_words_and_a_word_longer_than_that_by_characters() -> (
    None
):
    sentence = " ".join(f"word{i}" for i in range(400))
    chunks = split_text(sentence, 50)
    assert all(text_tokens(c) <= 50 for c in chunks)
    assert all(c.endswith(" ") for c in chunks[:-1])
    word = "x" * 1000
    assert all(text_tokens(c) <= 50 for c in split_text(word, 50))
    assert "".join(split_text(word, 50)).count("x") >= 1000


def test_the_split_field_is_the_longest_string_the_template_uses() -> None:
    template = Template.parse("{title} by {author}: {body}")
    record = {"title": "A title", "author": "Someone", "body": "long " * 50, "unused": "longer " * 90}
    assert long_field(template, record) == ("body",)
    assert long_field(template, record, "title") == ("title",)
    assert long_field(template, record, "unused") is None
    assert long_field(template, {"title": 1, "author": 2, "body": 3}) is None
    nested = Template.parse("{doc.text} ({doc.year})")
    assert long_field(nested, {"doc": {"text": "words", "year": 1990}}) == ("doc", "text")
    assert with_field({"doc": {"text": "a", "year": 1}}, ("doc", "text"), "b") == {
        "doc": {"text": "b", "year": 1}
    }


def test_parts_go_chunks_in_order_then_combines_level_by_level_then_the_final_call() -> None:
    text = paragraphs(10, 12)
    asked: list[str] = []
    answers: dict[str, str] = {}
    while True:
        part = next_part(text, 120, answers)
        assert text_tokens(part.text) <= 120
        asked.append(part.name)
        if part.final:
            break
        answers[part.name] = f"summary of {part.name}: " + "some words " * 12
    chunks = len(split_text(text, 120))
    assert asked[:chunks] == [f"chunk {i}/{chunks}" for i in range(1, chunks + 1)]
    combines = asked[chunks:-1]
    assert combines
    assert all(name.startswith("combine ") for name in combines)
    # Several levels: the summaries of one level did not fit one call.
    assert {name.split()[1].split(".")[0] for name in combines} >= {"1", "2"}
    assert asked[-1] == FINAL
    assert len(asked) == len(set(asked)), "no part is asked twice"
    # A request taken again asks for the first part not answered, whatever happened between.
    partial = {name: answers[name] for name in asked[:3]}
    assert next_part(text, 120, partial).name == asked[3]


def test_a_combine_says_it_reads_summaries_of_consecutive_parts_numbered_in_order() -> None:
    text = combine_text(["first", "second"])
    assert "2 summaries of consecutive parts of one document, in order" in text
    assert text.index("Part 1:\nfirst") < text.index("Part 2:\nsecond")


def test_a_split_is_sized_for_the_smallest_window_and_refused_when_even_a_part_cannot_fit() -> None:
    template = Template.parse("Summarise: {text}")
    record = {"text": "word " * 2000}
    plan = plan_split(template, record, 512, 100)
    assert isinstance(plan, SplitPlan)
    assert plan.split_tokens >= MIN_SPLIT_TOKENS
    # Its largest part fits the window with its completion bound, a margin to spare.
    assert plan.context_needed <= 512 - 16
    assert plan.calls > len(split_text(record["text"], plan.split_tokens))
    refused = plan_split(template, record, 512, 480)
    assert isinstance(refused, str)
    assert "even a part of it cannot fit" in refused
    assert isinstance(plan_split(template, {"text": 5}, 512, 100), str)
