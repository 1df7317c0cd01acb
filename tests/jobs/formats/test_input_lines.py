"""Input lines: the two accepted forms, and a clear `LINE N: what` for every kind of bad line."""

from __future__ import annotations

import orjson
import pytest

from jobs.formats.input_lines import BATCH_URL, EMBEDDINGS_URL, LineError, endpoint_of, parse_line

MESSAGES = [{"role": "user", "content": "hi"}]


def parse(obj: object, line_no: int = 1):
    return parse_line(orjson.dumps(obj), line_no)


def test_openai_batch_line_is_accepted() -> None:
    line = parse(
        {
            "custom_id": "task-1",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "m1", "messages": MESSAGES, "max_tokens": 5},
        }
    )
    assert line is not None
    assert line.custom_id == "task-1"
    assert line.body == {"messages": MESSAGES, "max_tokens": 5}
    assert line.models == ["m1"]


def test_bare_chat_body_is_accepted_and_keeps_its_parameters() -> None:
    line = parse(
        {
            "custom_id": "x",
            "messages": MESSAGES,
            "temperature": 0.3,
            "response_format": {"type": "json_object"},
        }
    )
    assert line is not None
    assert line.body == {"messages": MESSAGES, "temperature": 0.3, "response_format": {"type": "json_object"}}
    assert line.models is None


@pytest.mark.parametrize(
    "body",
    [
        {"input": "one text", "model": "openai/text-embedding-3-small"},
        {"input": ["first", "second"], "dimensions": 8},
        {"input": [101, 2023, 102]},
        {"input": [[101, 2023], [102]], "encoding_format": "base64"},
    ],
)
def test_embeddings_lines_are_accepted_in_both_forms(body: dict[str, object]) -> None:
    wrapped = parse({"custom_id": "e", "method": "POST", "url": "/v1/embeddings", "body": body})
    bare = parse({"custom_id": "e", **body})
    for line in (wrapped, bare):
        assert line is not None
        assert line.endpoint == EMBEDDINGS_URL
        assert line.body == {k: v for k, v in body.items() if k != "model"}
        assert endpoint_of(line.body) == EMBEDDINGS_URL
    assert parse({"custom_id": "c", "messages": MESSAGES}).endpoint == BATCH_URL  # type: ignore[union-attr]


def test_missing_custom_id_is_derived_from_the_line_number() -> None:
    line = parse({"messages": MESSAGES}, line_no=42)
    assert line is not None
    assert line.custom_id == "line-42"


def test_line_models_override_and_model_goes_first() -> None:
    line = parse({"messages": MESSAGES, "models": ["b", "c", "b"], "model": "a"})
    assert line is not None
    assert line.models == ["a", "b", "c"]


def test_blank_lines_are_skipped() -> None:
    assert parse_line(b"   ", 3) is None
    assert parse_line(b"", 3) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"{not json", "LINE 7: not valid JSON at column 2: unexpected character, expected a string key"),
        (b"[1, 2]", "LINE 7: each line must be a JSON object, got a list"),
        (b'"text"', "LINE 7: each line must be a JSON object, got a string"),
        (b'{"model": "m"}', 'LINE 7: no "messages"'),
        (b'{"messages": "hi"}', 'LINE 7: "messages" must be a list, got a string'),
        (b'{"messages": []}', 'LINE 7: "messages" is empty'),
        (b'{"messages": [{"role": "robot", "content": "x"}]}', "LINE 7: messages[0].role must be one of"),
        (b'{"messages": [{"role": "user"}]}', "LINE 7: messages[0].content is missing"),
        (b'{"messages": [{"role": "user", "content": 5}]}', "LINE 7: messages[0].content must be a string"),
        (
            b'{"custom_id": 17, "messages": [{"role": "user", "content": "x"}]}',
            'LINE 7: "custom_id" must be a string, got a number',
        ),
        (
            b'{"custom_id": "", "messages": [{"role": "user", "content": "x"}]}',
            'LINE 7: "custom_id" is empty',
        ),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "temperature": "0.2"}',
            'LINE 7: "temperature" must be a number, got a string',
        ),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1.5}',
            'LINE 7: "max_tokens" must be an integer, got a number',
        ),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": true}',
            'LINE 7: "max_tokens" must be an integer, got a boolean',
        ),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "model": 3}',
            'LINE 7: "model" must be a non-empty list of model ids, got a number',
        ),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "models": ["a", ""]}',
            'LINE 7: "models"[1] must be a model id string',
        ),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "stream": true}',
            'LINE 7: "stream": true is not supported',
        ),
        (b'{"messages": [{"role": "user", "content": "a\\u0000b"}]}', "LINE 7: contains the NUL character"),
        (
            b'{"custom_id": "a", "url": "/v1/completions", "method": "POST", "body": {"prompt": "x"}}',
            'LINE 7: "url" must be "/v1/chat/completions" or "/v1/embeddings", got "/v1/completions"',
        ),
        (
            b'{"custom_id": "a", "url": "/v1/embeddings", "method": "POST", "body": {"messages": []}}',
            'LINE 7: no "input": an embeddings request needs the text to embed',
        ),
        (b'{"input": ""}', 'LINE 7: "input" is an empty string'),
        (
            b'{"input": []}',
            'LINE 7: "input" must be a string or a non-empty list of strings or token ids, got an',
        ),
        (b'{"input": ["a", ""]}', "LINE 7: input[1] is an empty string"),
        (b'{"input": [[1, 2], []]}', "LINE 7: input[1] must be a non-empty list of token ids"),
        (b'{"input": {"text": "a"}}', 'LINE 7: "input" must be a string or a non-empty list'),
        (b'{"input": "a", "dimensions": "8"}', 'LINE 7: "dimensions" must be an integer, got a string'),
        (b'{"input": "a", "dimensions": 0}', 'LINE 7: "dimensions" must be at least 1, got 0'),
        (
            b'{"input": "a", "encoding_format": "int8"}',
            'LINE 7: "encoding_format" must be "float" or "base64"',
        ),
        (
            b'{"custom_id": "a", "url": "/v1/chat/completions", "method": "GET", "body": {}}',
            'LINE 7: "method" must be "POST", got "GET"',
        ),
        (
            b'{"custom_id": "a", "url": "/v1/chat/completions", "body": "x"}',
            'LINE 7: "body" must be an object, got a string',
        ),
        (
            b'{"custom_id": "a", "url": "/v1/chat/completions", "bdy": {}, "body": {}}',
            "LINE 7: unexpected field 'bdy'",
        ),
        (
            b'{"messages": [{"role": "user", "content": "caf\xe9"}]}',
            "LINE 7: not valid UTF-8 (byte 0xe9 at column 47)",
        ),
    ],
)
def test_bad_lines_say_which_line_and_what_is_wrong(raw: bytes, expected: str) -> None:
    with pytest.raises(LineError) as caught:
        parse_line(raw, 7)
    assert str(caught.value).startswith(expected), str(caught.value)


def test_a_lines_own_json_schema_is_checked_like_a_schema_file() -> None:
    broken = {
        "messages": MESSAGES,
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "x",
                "schema": {"type": "object", "properties": {"a": {"type": "strin"}}},
            },
        },
    }
    with pytest.raises(LineError, match=r"^LINE 3: .*not a valid JSON Schema at properties/a/type"):
        parse(broken, 3)
    bad_pattern = {
        "messages": MESSAGES,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"schema": {"type": "string", "pattern": "(["}},
        },
    }
    with pytest.raises(LineError, match=r"^LINE 4: .*not a valid JSON Schema at pattern"):
        parse(bad_pattern, 4)
    fine = {
        "messages": MESSAGES,
        "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}},
    }
    assert parse(fine) is not None
