"""One error hierarchy: each branch carries the exit status a command ends with and the HTTP answer the API gives."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from jobs.core.constants import EXIT_INTERRUPTED, EXIT_STOPPED
from jobs.core.errors import (
    BadInput,
    Conflict,
    Forbidden,
    Interrupted,
    NeedsPerson,
    NotFound,
    OrbatchError,
    RateLimited,
    ServiceUnavailable,
    SettingsError,
    Unauthorized,
)
from jobs.core.states import BatchStatus, Outcome, PauseReason, RequestStatus
from tests.support import ROOT


@pytest.mark.parametrize(
    ("error", "exit_status", "http_status", "error_type"),
    [
        (OrbatchError("a bug"), 1, 500, "server_error"),
        (BadInput("line 3: not JSON"), 2, 400, "invalid_request_error"),
        (SettingsError("ORBATCH_X: not a number"), 2, 400, "invalid_request_error"),
        (NotFound("no batch 'x'"), 2, 404, "invalid_request_error"),
        (Conflict("already cancelled"), 2, 409, "invalid_request_error"),
        (Unauthorized("no key"), 2, 401, "invalid_request_error"),
        (Forbidden("another site's form"), 2, 403, "permission_error"),
        (ServiceUnavailable("Postgres unreachable"), 1, 503, "server_error"),
        (NeedsPerson("paused on its budget"), EXIT_STOPPED, 409, "server_error"),
        (Interrupted("stopped watching"), EXIT_INTERRUPTED, 499, "server_error"),
    ],
)
def test_every_branch_carries_its_exit_status_and_http_answer(
    error: OrbatchError, exit_status: int, http_status: int, error_type: str
) -> None:
    assert isinstance(error, OrbatchError)
    assert error.exit_status == exit_status
    assert error.http_status == http_status
    assert error.error_type == error_type
    assert str(error) == error.message


def test_errors_that_ask_something_of_the_client_say_it_in_their_headers() -> None:
    assert Unauthorized("no key").headers() == {"WWW-Authenticate": 'Bearer realm="orbatch"'}
    assert Conflict("ended").headers() == {"x-should-retry": "false"}
    assert "retry-after" in {k.lower() for k in RateLimited("slow down", retry_after=2.5).headers()}


def _sql_texts(path: Path) -> list[str]:
    """The string constants of a module that read as SQL statements."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        is_text = isinstance(node, ast.Constant) and isinstance(node.value, str)
        if is_text and re.search(r"\b(SELECT|UPDATE|INSERT INTO|DELETE FROM)\b", node.value):
            found.append(node.value)
    return found


def test_sql_names_its_states_from_the_enums_and_never_spells_them_out() -> None:
    words = {s.value for enum in (RequestStatus, BatchStatus, Outcome, PauseReason) for s in enum}
    spelled = re.compile(r"'(" + "|".join(sorted(words)) + r")'")
    offenders = [
        f"{path.relative_to(ROOT)}: {match.group(0)}"
        for package in ("jobs", "worker")
        for path in sorted((ROOT / package).rglob("*.py"))
        for text in _sql_texts(path)
        for match in spelled.finditer(text)
    ]
    assert offenders == []
