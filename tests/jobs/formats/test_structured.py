"""A reply to a request that asked for a JSON schema counts only when it follows the schema."""

from __future__ import annotations

from jobs.formats.structured import reply_problem, requested_schema

SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": ["spam", "ham"]}, "confidence": {"type": "number"}},
    "required": ["label"],
}


def test_the_schema_is_read_from_response_format() -> None:
    body = {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}}
    assert requested_schema(body) == SCHEMA
    assert requested_schema({"response_format": {"type": "json_object"}}) is None
    assert requested_schema({}) is None


def test_a_following_reply_passes_fenced_or_not() -> None:
    assert reply_problem(SCHEMA, '{"label": "spam", "confidence": 0.9}') is None
    assert reply_problem(SCHEMA, '```json\n{"label": "ham"}\n```') is None


def test_replies_that_do_not_follow_say_why_and_where() -> None:
    assert "not JSON" in (reply_problem(SCHEMA, "spam") or "")
    assert "empty" in (reply_problem(SCHEMA, "") or "")
    assert "empty" in (reply_problem(SCHEMA, None) or "")
    problem = reply_problem(SCHEMA, '{"label": "eggs"}') or ""
    assert problem.startswith("the reply does not follow the schema at label:")
    assert "'label' is a required property" in (reply_problem(SCHEMA, "{}") or "")
