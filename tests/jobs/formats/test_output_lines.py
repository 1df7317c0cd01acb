"""Output lines: OpenAI Batch output and error lines, records with their answers."""

from __future__ import annotations

import orjson

from jobs.formats.output_lines import error_line, merge_answer, result_line


def test_a_result_line_follows_openai_batch_output_with_the_stored_body_as_is() -> None:
    line = result_line(5, "c1", "gen-1", 200, '{"x": 1}')
    assert line.endswith(b"\n")
    assert orjson.loads(line) == {
        "id": "batch_req_5",
        "custom_id": "c1",
        "response": {"status_code": 200, "request_id": "gen-1", "body": {"x": 1}},
        "error": None,
    }


def test_an_error_line_follows_openai_batch_error_files() -> None:
    assert error_line("c2", 6, "400", "bad") == {
        "id": "batch_req_6",
        "custom_id": "c2",
        "response": None,
        "error": {"code": "400", "message": "bad"},
    }


def test_a_json_answer_merges_into_its_record_and_text_goes_under_answer() -> None:
    record = {"id": 1, "label": "old"}
    assert merge_answer(record, '{"label": "spam"}', structured=True) == {"id": 1, "label": "spam"}
    assert merge_answer(record, "just text", structured=False) == {
        "id": 1,
        "label": "old",
        "answer": "just text",
    }
    assert merge_answer(record, "[1, 2]", structured=True) == {"id": 1, "label": "old", "answer": [1, 2]}
