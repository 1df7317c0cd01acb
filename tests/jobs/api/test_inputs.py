"""Hostile inputs: a NUL, bytes that are not UTF-8 or an absurd length in an id, a cursor, any query parameter,
a body's strings or an upload's fields, and limits out of range. Each is a 400 in OpenAI's shape that names the
parameter, never a 500, and nothing stored changes; a file of another purpose makes no batch."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.api.creation import window_seconds
from jobs.api.keys import NewKey
from jobs.api.schemas import COMPLETION_WINDOW_PATTERN
from jobs.core.constants import BATCH_LIST_MAX, FILE_LIST_MAX
from jobs.core.errors import BadInput
from tests.jobs.api.conftest import ApiServer, batch_lines, jsonl, wait_for

# What a hostile client puts in an id or a query parameter, as it appears in the URL.
HOSTILE = {
    "a NUL": "%00",
    "a NUL inside an id": "batch_%00abc",
    "a byte that is not UTF-8": "%ff",
    "an overlong encoding of NUL": "%c0%80",
    "60 kB": "a" * 60_000,
}

# Every route that takes an id or a query parameter, the parameter its value goes to, and where it goes.
ROUTES = [
    ("GET", "/batches/{}", "batch_id"),
    ("POST", "/batches/{}/cancel", "batch_id"),
    ("GET", "/batches?after={}", "after"),
    ("GET", "/batches?limit=2&after={}", "after"),
    ("GET", "/files/{}", "file_id"),
    ("GET", "/files/{}/content", "file_id"),
    ("DELETE", "/files/{}", "file_id"),
    ("GET", "/files?after={}", "after"),
    ("GET", "/files?purpose={}", "purpose"),
    ("GET", "/files?order={}", "order"),
    ("GET", "/files?{}=1", None),
]

LIMITS = ["-1", "0", "-99999999999999999999", "99999999999999999999", "1.5", "ten", "%00", "%ff"]


@dataclass
class Stored:
    """Alice's key, a file she uploaded, and a batch she made from a file with a bad line (`failed` at once, so
    nothing of it moves while a test looks)."""

    key: str
    file_id: str
    batch_id: str


@pytest.fixture
def stored(api_server: ApiServer, owners: dict[str, NewKey]) -> Stored:
    client = api_server.client(owners["alice"].key)
    upload = client.files.create(file=("in.jsonl", jsonl(batch_lines(2))), purpose="batch")
    bad = client.files.create(file=("bad.jsonl", jsonl([*batch_lines(1), b"{not json"])), purpose="batch")
    batch = client.batches.create(
        input_file_id=bad.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_body={"models": ["sim/echo"]},
    )
    assert batch.status == "failed"
    return Stored(owners["alice"].key, upload.id, batch.id)


async def _everything_stored(engine: AsyncEngine) -> list[tuple[Any, ...]]:
    """Every row a request could have changed: files, their bytes, batches and their requests."""
    queries = (
        "SELECT id, owner, filename, purpose, bytes, sha256, expires_at FROM api_file ORDER BY id",
        "SELECT file_id, count(*) FROM api_file_chunk GROUP BY file_id ORDER BY file_id",
        "SELECT b.id, b.status, b.metadata, b.cancelling_at, a.model, a.output_file_id FROM batch b"
        " LEFT JOIN api_batch a ON a.batch_id = b.id ORDER BY b.id",
        "SELECT batch_id, status, count(*) FROM request GROUP BY batch_id, status ORDER BY batch_id, status",
    )
    async with engine.connect() as conn:
        return [tuple(row) for query in queries for row in (await conn.execute(text(query))).all()]


def _error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["type"] == "invalid_request_error", body
    return dict(body["error"])


def _http(api_server: ApiServer, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=api_server.base_url, headers={"Authorization": f"Bearer {key}"})


def _raw(api_server: ApiServer, head: bytes) -> bytes:
    """The answer to a request written byte by byte: what no HTTP client would send (or send this long)."""
    host, port = api_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head + b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n")
        sock.settimeout(15)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE.keys())
async def test_a_hostile_id_or_query_parameter_is_a_400_naming_it_and_changes_nothing(
    api_server: ApiServer, stored: Stored, engine: AsyncEngine, value: str
) -> None:
    before = await _everything_stored(engine)
    async with _http(api_server, stored.key) as http:
        for method, route, param in ROUTES:
            response = await http.request(method, route.format(value))
            assert response.status_code == 400, (method, route, response.text[:300])
            error = _error(response)
            assert error["code"] == "invalid_value", error
            if param is not None:
                assert error["param"] == param, (route, error)
                assert f"Invalid value for '{param}'" in error["message"]
        # The same key's real objects are still there, as they were.
        assert (await http.get(f"/batches/{stored.batch_id}")).json()["status"] == "failed"
    assert await _everything_stored(engine) == before


@pytest.mark.parametrize("limit", LIMITS)
async def test_a_limit_out_of_range_or_not_a_number_is_a_400_naming_limit(
    api_server: ApiServer, stored: Stored, engine: AsyncEngine, limit: str
) -> None:
    before = await _everything_stored(engine)
    async with _http(api_server, stored.key) as http:
        for route in ("/batches", "/files"):
            response = await http.get(f"{route}?limit={limit}")
            assert response.status_code == 400, (route, limit, response.text)
            assert _error(response)["param"] == "limit"
        # The bounds themselves are taken.
        assert (await http.get(f"/batches?limit={BATCH_LIST_MAX}")).status_code == 200
        assert (await http.get(f"/files?limit={FILE_LIST_MAX}")).status_code == 200
        assert (await http.get(f"/batches?limit={BATCH_LIST_MAX + 1}")).status_code == 400
    assert await _everything_stored(engine) == before


def test_a_url_too_long_to_parse_names_its_long_parameter_or_is_414(
    api_server: ApiServer, stored: Stored
) -> None:
    auth = b"Authorization: Bearer " + stored.key.encode() + b"\r\n"
    answer = _raw(api_server, b"GET /v1/batches?limit=2&after=" + b"a" * 100_000 + b" HTTP/1.1\r\n" + auth)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:300]
    error = orjson.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
    assert (error["param"], error["code"], error["type"]) == (
        "after",
        "invalid_value",
        "invalid_request_error",
    )
    assert "at most 2048 are taken" in error["message"]
    # A path that long names no parameter the server could read.
    answer = _raw(api_server, b"GET /v1/batches/" + b"a" * 100_000 + b" HTTP/1.1\r\n" + auth)
    assert answer.startswith(b"HTTP/1.1 414"), answer[:300]
    assert b'"code":"uri_too_long"' in answer
    assert b"x-request-id: req_" in answer


BODIES = {
    "a NUL in a metadata value": ({"metadata": {"team": "a\x00b"}}, "metadata.team"),
    "a NUL in a metadata key": ({"metadata": {"te\x00am": "x"}}, "metadata.te\\x00am"),
    "a NUL in the input file's id": ({"input_file_id": "file-\x00"}, "input_file_id"),
    "a NUL in a model of the chain": ({"models": ["sim/echo", "sim/\x00"]}, "models.1"),
    "a NUL in the completion window": ({"completion_window": "24h\x00"}, "completion_window"),
    "a NUL in the callback URL": ({"callback_url": "http://x/\x00"}, "callback_url"),
    "a NUL in a key no one takes": ({"bd\x00y": 1}, "bd\\x00y"),
    "an input file id of 100 kB": ({"input_file_id": "f" * 100_000}, "input_file_id"),
    "seventeen metadata pairs": ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    "a metadata value of 513 characters": ({"metadata": {"team": "v" * 513}}, "metadata.team"),
    "a budget past what NUMERIC holds": ({"max_cost": "1e999999"}, "max_cost"),
    "a budget finer than NUMERIC holds": ({"max_cost": "1e-999999"}, "max_cost"),
    "a callback URL that is not one": ({"callback_url": "http://[::1"}, "callback_url"),
    # A name is shown back cut to 64 characters.
    "a metadata key of 65 characters": ({"metadata": {"k" * 65: "v"}}, ("metadata." + "k" * 65)[:64]),
}


@pytest.mark.parametrize(("change", "param"), BODIES.values(), ids=BODIES.keys())
async def test_a_batch_body_holding_nul_or_past_its_bounds_is_a_400_naming_the_field(
    api_server: ApiServer, stored: Stored, engine: AsyncEngine, change: dict[str, Any], param: str
) -> None:
    body = {
        "input_file_id": stored.file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        **change,
    }
    before = await _everything_stored(engine)
    async with _http(api_server, stored.key) as http:
        # Sent as a client's JSON encoder writes it: NUL as the escape \u0000.
        response = await http.post(
            "/batches", content=orjson.dumps(body), headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 400, response.text[:300]
    error = _error(response)
    assert error["param"] == param, error
    assert error["code"] in ("invalid_value", "unknown_parameter"), error
    assert await _everything_stored(engine) == before


def _multipart(purpose: bytes, filename: bytes) -> bytes:
    boundary = b"orbatchinputs"
    return (
        b'--orbatchinputs\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'
        + purpose
        + b'\r\n--orbatchinputs\r\nContent-Disposition: form-data; name="file"; filename="'
        + filename
        + b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
        + jsonl(batch_lines(1))
        + b"\r\n--"
        + boundary
        + b"--\r\n"
    )


UPLOADS = {
    "a NUL in the purpose": (b"batch\x00", b"in.jsonl", "purpose"),
    "a purpose that is not UTF-8": (b"\xffbatch", b"in.jsonl", "purpose"),
    "a NUL in the file's name": (b"batch", b"in\x00.jsonl", "file"),
    "a file name that is not UTF-8": (b"batch", b"in\xff.jsonl", "file"),
}


@pytest.mark.parametrize(("purpose", "filename", "param"), UPLOADS.values(), ids=UPLOADS.keys())
async def test_an_upload_whose_fields_hold_nul_or_are_not_utf8_is_a_400_and_stores_nothing(
    api_server: ApiServer, stored: Stored, engine: AsyncEngine, purpose: bytes, filename: bytes, param: str
) -> None:
    before = await _everything_stored(engine)
    async with _http(api_server, stored.key) as http:
        response = await http.post(
            "/files",
            content=_multipart(purpose, filename),
            headers={"Content-Type": "multipart/form-data; boundary=orbatchinputs"},
        )
    assert response.status_code == 400, response.text[:300]
    assert (_error(response)["param"], _error(response)["code"]) == (param, "invalid_value")
    assert await _everything_stored(engine) == before


def test_a_nul_in_a_header_or_a_raw_byte_in_the_url_is_a_400_in_openai_shape(
    api_server: ApiServer, owners: dict[str, NewKey]
) -> None:
    auth = b"Authorization: Bearer " + owners["alice"].key.encode() + b"\r\n"
    for head in (
        b"GET /v1/batches HTTP/1.1\r\nX-Team: a\x00b\r\n",
        b"GET /v1/batches/batch_\xff HTTP/1.1\r\n",
    ):
        answer = _raw(api_server, head + auth)
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
        assert b"x-request-id: req_" in answer
        assert b'"code":"invalid_http_request"' in answer


def test_a_dashboard_page_asked_with_a_nul_cursor_is_a_400_too(api_server: ApiServer, stored: Stored) -> None:
    with httpx.Client(base_url=api_server.url, headers={"Authorization": f"Bearer {stored.key}"}) as http:
        response = http.get("/?before=%00")
        assert response.status_code == 400
        assert _error(response)["param"] == "before"
        page = http.get("/batches/%ff", headers={"Accept": "text/html"})
        assert page.status_code == 400
        assert "text/html" in page.headers["content-type"]


async def test_a_batch_from_a_file_that_is_not_purpose_batch_is_a_400_through_the_sdk_and_stores_nothing(
    api_server: ApiServer, stored: Stored, engine: AsyncEngine
) -> None:
    client = api_server.client(stored.key)
    batch = client.batches.create(
        input_file_id=stored.file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_body={"models": ["sim/echo"]},
    )
    done = wait_for(client, batch.id)
    assert done.output_file_id is not None
    output = client.files.retrieve(done.output_file_id)
    assert output.purpose == "batch_output"
    before = await _everything_stored(engine)
    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.create(
            input_file_id=output.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert caught.value.code == "invalid_file_purpose"
    assert caught.value.param == "input_file_id"  # type: ignore[attr-defined]
    assert caught.value.body["message"] == (  # type: ignore[index]
        f"Invalid value for 'input_file_id': the file {output.id} has purpose 'batch_output', and a batch is "
        "made only from a file uploaded with purpose 'batch'."
    )
    assert await _everything_stored(engine) == before


def test_the_documented_completion_windows_are_the_ones_taken() -> None:
    import re

    pattern = re.compile(COMPLETION_WINDOW_PATTERN)
    for window in [f"{n}{unit}" for n in range(0, 800) for unit in "hd"] + ["024h", "1w", "24H", ""]:
        try:
            window_seconds(window)
        except BadInput:
            taken = False
        else:
            taken = True
        assert taken == bool(pattern.match(window)), window
