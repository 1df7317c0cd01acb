"""Schemathesis over the whole OpenAPI document `orbatch serve` answers at `/openapi.json`.

Each operation gets requests made from the document, valid ones and ones that break it (wrong types, missing
fields, values out of range), sent to the real server on Postgres and Redis; the operations that take an id get
them again with ids of a real file and batch, and batches are asked of a real file; and every parameter of a URL is also sent a NUL and a value longer
than any id, which random strings meet too seldom (a NUL cursor was a 500 that way). No answer may be a server
error, and each must be one the document declares: its status, content type, `x-request-id` header and body;
invalid requests must be refused.

Schemathesis' pytest plugin rewrites pytest's node ids, which pytest 9 no longer allows, so the operations are
explored here with its Python API: `schema.get_all_operations()`, `operation.as_strategy()` under Hypothesis'
`given`, and `case.call_and_validate()`. The examples are derandomized and bounded, so a run sends the same
requests every time: about 600, in 15 to 30 seconds on the two-core machine, busy or not.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from jobs.api.keys import NewKey
from tests.jobs.api.conftest import ApiServer, batch_lines, jsonl, wait_for

# Requests per operation and kind of data: enough to meet every parameter's edge cases, few enough that the whole
# document is covered in well under a minute on a loaded two-core machine.
EXAMPLES = 40

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]

SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    # Each example is one HTTP request; the failures are collected rather than shrunk.
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    suppress_health_check=[
        hypothesis.HealthCheck.too_slow,
        hypothesis.HealthCheck.filter_too_much,
        hypothesis.HealthCheck.data_too_large,
    ],
)


@dataclass
class Real:
    """Ids of objects that exist: an upload, a batch that ended, and its output file."""

    file_id: str
    batch_id: str
    output_file_id: str


def _real(api_server: ApiServer, key: str) -> Real:
    client = api_server.client(key)
    upload = client.files.create(file=("in.jsonl", jsonl(batch_lines(3))), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_body={"models": ["sim/echo"]},
    )
    done = wait_for(client, batch.id)
    assert done.output_file_id is not None
    return Real(upload.id, batch.id, done.output_file_id)


def _strategies(operation: APIOperation, real: Real) -> Iterator[tuple[str, object]]:
    """What each operation is explored with: data that fits the document, data that breaks it, for an operation
    on an object (deleting one aside, which would take it from the others) the real object's id, and for a new
    batch the real file."""
    yield "valid", operation.as_strategy(GenerationMode.POSITIVE)
    yield "invalid", operation.as_strategy(GenerationMode.NEGATIVE)
    ids = {
        "batch_id": real.batch_id,
        "file_id": real.output_file_id if "content" in operation.path else real.file_id,
    }
    names = {parameter.name for parameter in operation.path_parameters}
    if names and operation.method.upper() != "DELETE":
        yield "real ids", operation.as_strategy(path_parameters={name: ids[name] for name in names})
    if operation.label == "POST /v1/batches":
        # Batches asked of a real file, so the rest of the body meets the code that stores a batch.
        yield (
            "real file",
            operation.as_strategy(GenerationMode.POSITIVE).map(lambda case: _of_file(case, real)),
        )


def _of_file(case: Case, real: Real) -> Case:
    if isinstance(case.body, dict):
        case.body = {**case.body, "input_file_id": real.file_id, "endpoint": "/v1/chat/completions"}
    return case


def _hostile(operation: APIOperation, real: Real) -> Iterator[Case]:
    """Each parameter of the operation's URL given a NUL, then a value longer than any id, the others real."""
    ids = {"batch_id": real.batch_id, "file_id": real.file_id}
    for parameter in (*operation.path_parameters, *operation.query):
        for value in ("\x00", "x\x00y", "x" * 5000):
            path = {p.name: ids[p.name] for p in operation.path_parameters}
            if parameter.location == "path":
                yield operation.Case(path_parameters={**path, parameter.name: value})
            else:
                yield operation.Case(path_parameters=path or None, query={parameter.name: value})


def _explore(strategy: object, call: Callable[[Case], None]) -> None:
    @SETTINGS
    @hypothesis.given(case=strategy)
    def explore(case: Case) -> None:
        call(case)

    explore()


@pytest.fixture
def session(owners: dict[str, NewKey]) -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {owners['alice'].key}"
        yield session


def test_schemathesis_finds_no_server_error_and_no_answer_the_document_does_not_declare(
    api_server: ApiServer, owners: dict[str, NewKey], session: requests.Session
) -> None:
    started = time.monotonic()
    real = _real(api_server, owners["alice"].key)
    schema = schemathesis.openapi.from_url(f"{api_server.url}/openapi.json")
    failures: list[str] = []
    explored: list[str] = []
    calls = 0

    def call(case: Case, where: str) -> None:
        nonlocal calls
        calls += 1
        try:
            case.call_and_validate(base_url=api_server.url, session=session, checks=CHECKS)
        except FailureGroup as group:
            failures.append(f"{where}: {group}")

    for result in schema.get_all_operations():
        operation = result.ok()
        for kind, strategy in _strategies(operation, real):
            try:
                _explore(strategy, lambda case, where=f"{operation.label} ({kind})": call(case, where))
            except Unsatisfiable:
                # Nothing in the document to break (an id that may be any string): no invalid request exists.
                assert kind == "invalid", operation.label
                continue
            explored.append(f"{operation.label} ({kind})")
        for case in _hostile(operation, real):
            call(case, f"{operation.label} (hostile)")

    elapsed = time.monotonic() - started
    print(f"schemathesis: {calls} requests over {len(explored)} explorations in {elapsed:.1f} s")
    assert len({label.split(" (")[0] for label in explored}) == 9, explored
    assert "POST /v1/batches (real file)" in explored
    assert not failures, f"{len(failures)} failures; the first:\n\n" + "\n\n".join(failures[:3])
    assert "Exception in ASGI application" not in api_server.log()
