"""Every answer of `orbatch serve` carries an `x-request-id` of its own, and the server's log line of a refused or
failed request carries the same id, so a user quoting it leads to that line."""

from __future__ import annotations

import re
import socket
from typing import Any

import httpx
import orjson
from starlette.testclient import TestClient

from jobs.api.app import create_app
from jobs.api.keys import NewKey
from jobs.core.settings import Settings
from tests.jobs.api.conftest import ApiServer
from tests.support import wait_until

REQUEST_ID = re.compile(r"req_[0-9a-f]{32}")


def _id(response: httpx.Response) -> str:
    request_id = response.headers.get("x-request-id", "")
    assert REQUEST_ID.fullmatch(request_id), (response.status_code, response.url, dict(response.headers))
    return request_id


def _log_lines(server: ApiServer) -> list[dict[str, Any]]:
    lines = []
    for line in server.log().splitlines():
        if line.startswith("{"):
            lines.append(orjson.loads(line))
    return lines


def _logged(server: ApiServer, request_id: str) -> dict[str, Any]:
    """The server's log line of the request with this id."""
    return wait_until(
        lambda: next((line for line in _log_lines(server) if line.get("request_id") == request_id), None),
        f"a log line with request_id {request_id}",
        seconds=10,
    )


def test_every_kind_of_answer_carries_a_request_id_of_its_own(
    api_server: ApiServer, owners: dict[str, NewKey]
) -> None:
    auth = {"Authorization": f"Bearer {owners['alice'].key}"}
    with httpx.Client(base_url=api_server.url) as http:
        answers = {
            "an API route": http.get("/v1/batches", headers=auth),
            "an upload": http.post(
                "/v1/files", headers=auth, files={"file": ("a.jsonl", b"{}\n")}, data={"purpose": "batch"}
            ),
            "a refused parameter": http.get("/v1/batches?limit=0", headers=auth),
            "no key": http.get("/v1/batches"),
            "an unknown batch": http.get("/v1/batches/batch_nope", headers=auth),
            "an unknown path": http.get("/v1/nowhere", headers=auth),
            "a method not allowed": http.delete("/v1/batches/batch_nope", headers=auth),
            "the dashboard": http.get("/", headers=auth),
            "the dashboard's sign-in": http.get("/", headers={"Accept": "text/html"}),
            "a dashboard asset": http.get("/static/dashboard.css"),
            "metrics": http.get("/metrics"),
            "the OpenAPI document, the compose file's health check": http.get("/openapi.json"),
            "the docs page": http.get("/docs"),
        }
        statuses = {name: answer.status_code for name, answer in answers.items()}
        assert statuses == {
            "an API route": 200,
            "an upload": 200,
            "a refused parameter": 400,
            "no key": 401,
            "an unknown batch": 404,
            "an unknown path": 404,
            "a method not allowed": 405,
            "the dashboard": 200,
            "the dashboard's sign-in": 303,
            "a dashboard asset": 200,
            "metrics": 200,
            "the OpenAPI document, the compose file's health check": 200,
            "the docs page": 200,
        }
        ids = [_id(answer) for answer in answers.values()]
        assert len(set(ids)) == len(ids)


def test_a_refused_request_is_found_in_the_log_by_its_request_id(
    api_server: ApiServer, owners: dict[str, NewKey]
) -> None:
    auth = {"Authorization": f"Bearer {owners['alice'].key}"}
    with httpx.Client(base_url=api_server.base_url, headers=auth) as http:
        refused = http.get("/batches", params={"after": "batch_\x00"})
        missing = http.get("/files/file-nope")
    line = _logged(api_server, _id(refused))
    assert (line["event"], line["status"], line["param"], line["path"]) == (
        "request refused",
        400,
        "after",
        "/v1/batches",
    )
    line = _logged(api_server, _id(missing))
    assert (line["status"], line["code"]) == (404, "file_not_found")


def test_an_incoming_x_request_id_is_logged_beside_ours_and_not_echoed(
    api_server: ApiServer, owners: dict[str, NewKey]
) -> None:
    with httpx.Client(base_url=api_server.base_url) as http:
        answer = http.get(
            "/batches/batch_nope",
            headers={"Authorization": f"Bearer {owners['alice'].key}", "X-Request-Id": "proxy-7f3a"},
        )
    assert answer.status_code == 404
    ours = _id(answer)
    assert ours != "proxy-7f3a"
    line = _logged(api_server, ours)
    assert line["client_request_id"] == "proxy-7f3a"


def test_a_request_the_server_refuses_before_the_app_has_a_request_id_and_a_log_line(
    api_server: ApiServer,
) -> None:
    host, port = api_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"GET /v1/batches HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 40_000 + b"\r\n\r\n"
        )
        sock.settimeout(15)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    request_id = re.search(rb"x-request-id: (req_[0-9a-f]{32})", answer)
    assert request_id is not None, answer[:400]
    line = _logged(api_server, request_id.group(1).decode())
    assert (line["status"], line["code"]) == (431, "headers_too_large")


def test_a_bug_is_a_500_whose_message_quotes_the_request_id_of_its_answer() -> None:
    # The app without its lifespan (never entered): no engine, no Redis, so every API route meets a bug.
    http = TestClient(create_app(Settings()), raise_server_exceptions=False)
    try:
        answer = http.get("/v1/batches", headers={"Authorization": "Bearer obk_x"})
    finally:
        http.close()
    assert answer.status_code == 500
    error = answer.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "server_error")
    assert f"under the request ID {_id(answer)}" in error["message"]
