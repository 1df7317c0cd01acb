"""A reply to a request that asked for a JSON schema counts only when it follows the schema."""

from __future__ import annotations

from jobs.formats.structured import (
    HEALING_PLUGIN,
    REPLY_QUOTE_CHARS,
    correction_turn,
    quoted_reply,
    reply_problem,
    requested_schema,
    routed_for_schema,
)

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


ASKING = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}


def test_a_schema_request_is_routed_to_providers_that_honour_it_unless_the_line_chose() -> None:
    body = {"messages": [], "response_format": ASKING}
    assert routed_for_schema(body, heal=False)["provider"] == {"require_parameters": True}
    assert "plugins" not in routed_for_schema(body, heal=False)
    assert routed_for_schema({"messages": []}, heal=True) == {"messages": []}
    own = {**body, "provider": {"require_parameters": False, "order": ["A"]}}
    assert routed_for_schema(own, heal=False)["provider"] == {"require_parameters": False, "order": ["A"]}
    other = {**body, "provider": {"order": ["A"]}}
    assert routed_for_schema(other, heal=False)["provider"] == {"order": ["A"], "require_parameters": True}
    healed = routed_for_schema({**body, "plugins": [{"id": "web"}]}, heal=True)
    assert healed["plugins"] == [{"id": "web"}, {"id": "response-healing"}]
    off = [{"id": HEALING_PLUGIN, "enabled": False}]
    assert routed_for_schema({**body, "plugins": off}, heal=True)["plugins"] == off
    assert "provider" not in body  # the stored body is left as it was


def test_the_correction_turn_quotes_the_reply_and_the_error_and_bounds_the_reply() -> None:
    body = {"messages": [{"role": "user", "content": "label it"}], "response_format": ASKING}
    sent = correction_turn(body, '{"label": "eggs"}', "the reply does not follow the schema at label")
    assert sent["messages"][0] == body["messages"][0]
    assert sent["messages"][1] == {"role": "assistant", "content": '{"label": "eggs"}'}
    assert sent["messages"][2]["role"] == "user"
    assert "does not follow the schema at label" in sent["messages"][2]["content"]
    assert len(body["messages"]) == 1
    long = quoted_reply("x" * (REPLY_QUOTE_CHARS + 10))
    assert long.startswith("x" * REPLY_QUOTE_CHARS)
    assert long.endswith("[... 10 more characters cut]")
    assert quoted_reply(None) == ""
