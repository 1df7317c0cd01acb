"""Templates over plain records: placeholders, bad records named by line, schemas checked before sending."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from jobs.formats.input_lines import LineError, parse_record
from jobs.formats.prompt_template import (
    Template,
    TemplateError,
    load_json_schema,
    load_template_text,
    parse_answer,
)

SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": ["spam", "ham"]}},
    "required": ["label"],
    "additionalProperties": False,
}


def test_fields_are_filled_from_the_record_and_the_text_is_the_single_user_message() -> None:
    template = Template.parse("Label: {text} (from {meta.source})")
    body = template.body({"text": "hello", "meta": {"source": "web"}})
    assert body == {"messages": [{"role": "user", "content": "Label: hello (from web)"}]}
    assert template.fields == ["text", "meta.source"]


def test_a_system_message_comes_first_only_when_given() -> None:
    body = Template.parse("{q}", system="Be brief.").body({"q": "why?"})
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "why?"},
    ]


def test_values_that_are_not_strings_are_written_as_json() -> None:
    rendered = Template.parse("{n} {ok} {tags} {none}").render(
        {"n": 3, "ok": True, "tags": ["a"], "none": None}
    )
    assert rendered == '3 true ["a"] null'


def test_doubled_braces_and_braces_that_name_no_field_are_literal() -> None:
    template = Template.parse('Answer as {"label": "..."} for {{text}}: {text}')
    assert template.render({"text": "hi"}) == 'Answer as {"label": "..."} for {text}: hi'


def test_a_missing_field_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"no field 'meta.source' \(the template uses \{meta.source\}\)"):
        Template.parse("{meta.source}").render({"meta": {}})


def test_a_template_without_placeholders_is_refused() -> None:
    with pytest.raises(TemplateError, match="no \\{field\\} placeholder"):
        Template.parse("Summarise this.")


def test_a_schema_asks_for_strict_structured_output_named_after_its_file() -> None:
    body = Template.parse("{t}", json_schema=SCHEMA, schema_name="spam label").body({"t": "x"})
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "spam_label", "strict": True, "schema": SCHEMA},
    }


def test_a_record_line_missing_a_field_is_a_bad_line_with_its_number() -> None:
    template = Template.parse("{text}")
    with pytest.raises(LineError, match=r"^LINE 7: the record has no field 'text'"):
        parse_record(orjson.dumps({"title": "x"}), 7, template)
    with pytest.raises(LineError, match=r"^LINE 8: with --template each line must be a JSON object"):
        parse_record(b"[1, 2]", 8, template)


def test_a_record_keeps_itself_and_its_custom_id() -> None:
    parsed = parse_record(orjson.dumps({"custom_id": "r1", "text": "x"}), 1, Template.parse("{text}"))
    assert parsed is not None
    assert parsed.custom_id == "r1"
    assert parsed.record == {"custom_id": "r1", "text": "x"}
    assert parse_record(b"  ", 2, Template.parse("{text}")) is None


def test_the_template_option_reads_a_file_when_it_names_one(tmp_path: Path) -> None:
    path = tmp_path / "prompt.txt"
    path.write_text("Summarise: {text}\n")
    assert load_template_text(str(path)) == "Summarise: {text}\n"
    assert load_template_text("Summarise: {text}") == "Summarise: {text}"


def test_a_broken_schema_file_is_refused_with_where_it_is_wrong(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"type": "object", "properties": {"label": {"type": "strin"}}}')
    with pytest.raises(TemplateError, match=r"not a valid JSON Schema at properties/label/type"):
        load_json_schema(bad)
    broken = tmp_path / "broken.json"
    broken.write_text("{nope")
    with pytest.raises(TemplateError, match="not valid JSON"):
        load_json_schema(broken)


def test_an_answer_is_parsed_with_or_without_a_markdown_fence() -> None:
    assert parse_answer('{"label": "spam"}') == {"label": "spam"}
    assert parse_answer('```json\n{"label": "ham"}\n```') == {"label": "ham"}
    with pytest.raises(orjson.JSONDecodeError):
        parse_answer("spam")
