"""Output lines: OpenAI Batch output and error lines, and records with their answers merged in."""

from __future__ import annotations

from typing import Any

import orjson

from jobs.formats.prompt_template import parse_answer

__all__ = ["ANSWER_FIELD", "error_line", "merge_answer", "result_line"]

# Where a plain-text answer goes in `--format records` output (a JSON object answer is merged field by field).
ANSWER_FIELD = "answer"


def result_line(
    request_id: int, custom_id: str, generation_id: str | None, status: int | None, body: str
) -> bytes:
    """An OpenAI Batch output line for a completed request, its stored response body spliced in as text.

    Re-encoding a million bodies would dominate an export, and the stored body is already JSON.
    """
    head = orjson.dumps({"id": f"batch_req_{request_id}", "custom_id": custom_id})[:-1]
    response = orjson.dumps({"status_code": status or 200, "request_id": generation_id})[:-1]
    return b'%s,"response":%s,"body":%s},"error":null}\n' % (head, response, body.encode())


def error_line(
    custom_id: str,
    request_id: int,
    code: str,
    message: str,
    status_code: int | None = None,
    body: Any = None,
) -> dict[str, Any]:
    """An OpenAI Batch error-file line for a request that did not complete."""
    response = None if status_code is None else {"status_code": status_code, "request_id": None, "body": body}
    return {
        "id": f"batch_req_{request_id}",
        "custom_id": custom_id,
        "response": response,
        "error": {"code": code, "message": message},
    }


def merge_answer(record: dict[str, Any], content: str | None, structured: bool) -> dict[str, Any]:
    """A record with its answer: the fields of a JSON object answer, else the answer under `answer`."""
    merged = dict(record)
    if structured and content is not None:
        try:
            value = parse_answer(content)
        except orjson.JSONDecodeError:
            value = content
        if isinstance(value, dict):
            merged.update(value)
        else:
            merged[ANSWER_FIELD] = value
    else:
        merged[ANSWER_FIELD] = content
    return merged
