"""Hostile and broken requests: each gets OpenAI's error shape and the status OpenAI uses; none is a 500, and
nothing of a refused upload is stored."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from datetime import datetime

import httpx
import openai
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.api.keys import NewKey, create_key
from tests.conftest import Services
from tests.jobs.api.conftest import ApiServer, api_env, batch_lines, jsonl
from tests.support import Simulator, until

UPLOAD_LIMIT = 100_000
BOUNDARY = "orbatchtestboundary"


@pytest.fixture(scope="module")
def server(
    services: Services,
    database_url: str,
    queue_name: str,
    session_simulator: Simulator,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ApiServer]:
    env = api_env(
        services,
        database_url,
        session_simulator,
        queue_name,
        ORBATCH_MAX_UPLOAD_BYTES=str(UPLOAD_LIMIT),
        ORBATCH_UPLOAD_IDLE_SECONDS="1",
    )
    api = ApiServer(env, tmp_path_factory.mktemp("hostile") / "serve.log")
    yield api
    assert api.stop() == 0
    log = api.log()
    # Not one request of this module made the server fail.
    assert "Exception in ASGI application" not in log
    assert "request failed" not in log


def _error(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


async def _stored_files(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM api_file_chunk"))).scalar_one()) + int(
            (await conn.execute(text("SELECT count(*) FROM api_file"))).scalar_one()
        )


async def _upload_waiting(engine: AsyncEngine) -> tuple[int, datetime] | None:
    """The server's backend of an upload in progress, waiting for bytes inside the transaction that made its
    file row: its pid and when that transaction began."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT pid, xact_start FROM pg_stat_activity WHERE datname = current_database()"
                    " AND state = 'idle in transaction' AND query LIKE 'INSERT INTO api_file%'"
                )
            )
        ).first()
    return None if row is None else (int(row.pid), row.xact_start)


async def _transaction_ended(engine: AsyncEngine, pid: int, began: datetime) -> bool:
    async with engine.connect() as conn:
        still = (
            await conn.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid AND xact_start = :began"),
                {"pid": pid, "began": began},
            )
        ).scalar_one()
    return still == 0


def _multipart(content: bytes, *, close: bool = True, purpose: bytes = b"batch") -> bytes:
    parts = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'.encode()
        + purpose
        + f'\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="x.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + content
    )
    return parts + (f"\r\n--{BOUNDARY}--\r\n".encode() if close else b"")


async def _pieces(body: bytes) -> AsyncIterator[bytes]:
    """The body in small pieces, sent chunked (no Content-Length)."""
    for start in range(0, len(body), 8192):
        yield body[start : start + 8192]


def _raw_upload_head(server: ApiServer, key: str, length: int) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        (
            f"POST /v1/files HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {length}\r\n\r\n"
        ).encode()
    )
    return sock


def _read_answer(sock: socket.socket) -> bytes:
    sock.settimeout(15)
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    return answer


def test_bad_bodies_and_content_types_are_400_and_415_naming_what_is_wrong(
    server: ApiServer, owners: dict[str, NewKey]
) -> None:
    auth = {"Authorization": f"Bearer {owners['alice'].key}"}
    valid = '{"input_file_id": "file-x", "endpoint": "/v1/chat/completions", "completion_window": "24h"'
    cases: list[tuple[str, str, dict[str, str], bytes, int, object, object]] = [
        (
            "POST",
            "/batches",
            {"Content-Type": "application/json"},
            b'{"input_file_id": ',
            400,
            "invalid_json",
            None,
        ),
        ("POST", "/batches", {"Content-Type": "text/plain"}, b"{}", 415, "unsupported_media_type", None),
        ("POST", "/batches", {}, b"{}", 415, "unsupported_media_type", None),
        ("POST", "/batches", {"Content-Type": "application/json"}, b"[1, 2]", 400, "invalid_request", None),
        (
            "POST",
            "/batches",
            {"Content-Type": "application/json"},
            b"{}",
            400,
            "missing_required_parameter",
            "input_file_id",
        ),
        (
            "POST",
            "/batches",
            {"Content-Type": "application/json"},
            (valid + ', "bdy": 1}').encode(),
            400,
            "unknown_parameter",
            "bdy",
        ),
        (
            "POST",
            "/batches",
            {"Content-Type": "application/json"},
            (valid + ', "max_attempts": "3"}').encode(),
            400,
            "invalid_value",
            "max_attempts",
        ),
        (
            "POST",
            "/batches",
            {"Content-Type": "application/json"},
            valid.replace("24h", "1h").encode() + b"}",
            400,
            "invalid_value",
            "completion_window",
        ),
        (
            "POST",
            "/batches",
            {"Content-Type": "application/json"},
            valid.replace("/v1/chat/completions", "/v1/completions").encode() + b"}",
            400,
            "invalid_value",
            "endpoint",
        ),
        (
            "POST",
            "/batches",
            {"Content-Type": "application/json"},
            (valid + ', "max_cost": -1}').encode(),
            400,
            "invalid_value",
            "max_cost",
        ),
        (
            "POST",
            "/batches",
            {"Content-Type": "application/json"},
            (valid + ', "models": ["a", 3]}').encode(),
            400,
            "invalid_value",
            "models.1",
        ),
        (
            "POST",
            "/batches",
            {"Content-Type": "application/json"},
            (valid + ', "callback_url": "http://169.254.169.254/"}').encode(),
            400,
            "callback_not_allowed",
            "callback_url",
        ),
        (
            "POST",
            "/batches",
            {"Content-Type": "application/json"},
            (valid + "}").encode(),
            404,
            "file_not_found",
            "input_file_id",
        ),
        ("POST", "/files", {"Content-Type": "application/json"}, b"{}", 415, "unsupported_media_type", None),
        ("POST", "/files", {"Content-Type": "multipart/form-data"}, b"x", 400, "invalid_request", None),
        (
            "POST",
            "/files",
            {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
            b"garbage",
            400,
            "invalid_multipart",
            None,
        ),
        (
            "POST",
            "/files",
            {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
            _multipart(b"{}", purpose=b"fine-tune"),
            400,
            "invalid_value",
            "purpose",
        ),
        (
            "POST",
            "/files",
            {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
            _multipart(b"{}").replace(b'name="purpose"', b'name="porpoise"'),
            400,
            "unknown_parameter",
            "porpoise",
        ),
        ("GET", "/batches?limit=0", {}, b"", 400, "invalid_value", "limit"),
        ("GET", "/files?order=sideways", {}, b"", 400, "invalid_value", "order"),
        ("GET", "/files?after=file-nope", {}, b"", 404, None, "after"),
        ("GET", "/nowhere", {}, b"", 404, "unknown_url", None),
        ("DELETE", "/batches/batch_x", {}, b"", 405, "method_not_allowed", None),
    ]
    with httpx.Client(base_url=server.base_url, headers=auth) as http:
        for method, path, headers, content, status, code, param in cases:
            response = http.request(method, path, headers=headers, content=content)
            assert response.status_code == status, (method, path, content[:80], response.text)
            error = _error(response)
            assert (error["code"], error["param"]) == (code, param), (path, content[:80], error)
            assert error["type"] == "invalid_request_error"


def test_huge_headers_are_431_and_a_huge_json_body_413_without_reading_it_whole(
    server: ApiServer, owners: dict[str, NewKey]
) -> None:
    auth = {"Authorization": f"Bearer {owners['alice'].key}"}
    with httpx.Client(base_url=server.base_url, headers=auth) as http:
        response = http.get("/batches", headers={"X-Padding": "a" * 100_000})
        assert response.status_code == 431
        assert _error(response)["code"] == "headers_too_large"
        response = http.post(
            "/batches", headers={"Content-Type": "application/json"}, content=b" " * 5_000_000
        )
        assert response.status_code == 413
        assert _error(response)["code"] == "request_too_large"
        # The server is fine afterwards.
        assert http.get("/batches").status_code == 200


async def test_an_upload_over_the_limit_is_413_through_the_sdk_and_nothing_is_stored(
    server: ApiServer, owners: dict[str, NewKey], engine: AsyncEngine
) -> None:
    client = server.client(owners["alice"].key)
    big = jsonl(batch_lines(2000))
    assert len(big) > 2 * UPLOAD_LIMIT
    with pytest.raises(openai.APIStatusError) as caught:
        client.files.create(file=("big.jsonl", big), purpose="batch")
    assert caught.value.status_code == 413
    assert caught.value.code == "file_too_large"
    assert "ORBATCH_MAX_UPLOAD_BYTES" in caught.value.message
    # Sent without a Content-Length (chunked), the limit still holds as the bytes arrive.
    async with httpx.AsyncClient(
        base_url=server.base_url, headers={"Authorization": f"Bearer {owners['alice'].key}"}
    ) as http:
        response = await http.post(
            "/files",
            headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
            content=_pieces(_multipart(big)),
        )
    assert response.status_code == 413
    assert await _stored_files(engine) == 0


async def test_a_stalled_upload_is_408_and_a_cut_off_one_stores_nothing(
    server: ApiServer, owners: dict[str, NewKey], engine: AsyncEngine
) -> None:
    body = _multipart(jsonl(batch_lines(50)))
    stalled = _raw_upload_head(server, owners["alice"].key, len(body))
    stalled.sendall(body[: len(body) // 2])
    answer = _read_answer(stalled)
    stalled.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"code":"upload_stalled"' in answer

    aborted = _raw_upload_head(server, owners["alice"].key, len(body))
    aborted.sendall(body[: len(body) // 2])
    # The server holds the upload's transaction open while it waits for the rest; the client goes away.
    pid, began = await until(lambda: _upload_waiting(engine), "the server receiving the upload")
    aborted.close()
    # A body that ends where its Content-Length says, but without the closing boundary.
    cut = _multipart(jsonl(batch_lines(50)), close=False)
    truncated = _raw_upload_head(server, owners["alice"].key, len(cut))
    truncated.sendall(cut)
    answer = _read_answer(truncated)
    truncated.close()
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b'"code":"incomplete_upload"' in answer
    # The aborted upload's transaction has ended (rolled back, or committed had it stored something).
    await until(lambda: _transaction_ended(engine, pid, began), "the aborted upload's transaction to end")
    assert await _stored_files(engine) == 0
    assert server.client(owners["alice"].key).files.list().data == []


async def test_a_key_over_its_rate_limit_gets_429_with_retry_after_and_other_keys_do_not(
    server: ApiServer, owners: dict[str, NewKey], engine: AsyncEngine
) -> None:
    limited = await create_key(engine, "carol", rate_per_minute=3)
    client = server.client(limited.key)
    for _ in range(3):
        client.batches.list()
    with pytest.raises(openai.RateLimitError) as caught:
        client.batches.list()
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.body["type"] == "requests"  # type: ignore[index]
    assert 1 <= int(caught.value.response.headers["retry-after"]) <= 21
    assert "3 requests per minute" in caught.value.message
    # Another owner is not slowed by carol.
    for _ in range(5):
        server.client(owners["alice"].key).batches.list()
