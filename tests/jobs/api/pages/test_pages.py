"""The dashboard over HTTP as a script sees it: Bearer keys, owners kept apart, forms only from its own pages,
the live part alone on request, downloads, headers; and the server's `/metrics`."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.api.keys import NewKey, revoke_key
from tests.jobs.api.conftest import ApiServer, api_env, wait_for
from tests.jobs.api.pages.conftest import start_batch
from tests.support import Simulator

pytestmark = pytest.mark.xdist_group("browser")

HTML = {"accept": "text/html"}


def _bearer(key: str) -> dict[str, str]:
    return {**HTML, "authorization": f"Bearer {key}"}


def _sample(text: str, name: str, labels: str = "") -> float:
    """The value of one sample in Prometheus text (0 when it is absent)."""
    pattern = rf"^{re.escape(name)}{re.escape(labels)} (\S+)$" if labels else rf"^{re.escape(name)} (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.fixture(scope="module")
def open_server(
    database_url: str, queue_name: str, session_simulator: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """A `--no-auth` loopback server whose /metrics asks for a token."""
    env = api_env(database_url, session_simulator, queue_name, ORBATCH_METRICS_TOKEN="scrape-secret")
    server = ApiServer(env, tmp_path_factory.mktemp("open") / "serve.log", "--no-auth", "--no-worker")
    yield server
    assert server.stop() == 0, server.log()[-3000:]


def test_a_script_reads_every_page_with_its_bearer_key(
    api_server: ApiServer, owners: dict[str, NewKey]
) -> None:
    client = api_server.client(owners["alice"].key)
    batch_id = start_batch(client, 3, ["sim/echo"], name="read by a script")
    wait_for(client, batch_id)
    with httpx.Client(base_url=api_server.url, headers=_bearer(owners["alice"].key)) as http:
        for path in ("/", f"/batches/{batch_id}", "/fleet"):
            page = http.get(path)
            assert page.status_code == 200, (path, page.text[:500])
            assert page.headers["content-type"].startswith("text/html")
            assert "script-src 'self'" in page.headers["content-security-policy"]
            assert page.headers["cache-control"] == "no-store"
        live = http.get(f"/batches/{batch_id}", headers={"x-orbatch-live": "1"})
        assert "<html" not in live.text
        assert 'id="count-completed"' in live.text
        results = http.get(f"/batches/{batch_id}/results.jsonl")
        assert results.headers["content-disposition"].startswith("attachment")
        assert sorted(orjson.loads(line)["custom_id"] for line in results.text.splitlines()) == [
            "q0",
            "q1",
            "q2",
        ]
        assert http.get(f"/batches/{batch_id}/errors.jsonl").text == ""


def test_a_wrong_key_is_a_401_and_a_browser_without_one_is_sent_to_sign_in(api_server: ApiServer) -> None:
    with httpx.Client(base_url=api_server.url) as http:
        wrong = http.get("/", headers=_bearer("obk_wrong"))
        assert wrong.status_code == 401
        assert "Incorrect API key" in wrong.text
        assert "obk_wrong" not in wrong.text
        browser = http.get("/batches/batch_x", headers=HTML)
        assert browser.status_code == 303
        assert browser.headers["location"] == "/signin?next=/batches/batch_x"
        # The API itself still answers in OpenAI's shape.
        api = http.get("/v1/batches", headers=HTML)
        assert api.status_code == 401
        assert api.json()["error"]["code"] is None


def test_an_owner_never_sees_another_owners_batch(api_server: ApiServer, owners: dict[str, NewKey]) -> None:
    batch_id = start_batch(api_server.client(owners["alice"].key), 1, ["sim/echo"], name="alice's own")
    with httpx.Client(base_url=api_server.url, headers=_bearer(owners["bob"].key)) as http:
        assert batch_id not in http.get("/").text
        for path in (f"/batches/{batch_id}", f"/batches/{batch_id}/results.jsonl"):
            assert http.get(path).status_code == 404
        assert http.post(f"/batches/{batch_id}/cancel").status_code == 404


def _sign_in(http: httpx.Client, key: str) -> str:
    """Sign in through the form; the form token of the pages."""
    answer = http.post("/signin", data={"key": key, "next": "/"})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/"
    token = re.search(r'name="token" value="([^"]+)"', http.get("/").text)
    assert token is not None
    return token.group(1)


def test_a_form_from_another_site_or_without_the_pages_token_is_refused(
    api_server: ApiServer, owners: dict[str, NewKey]
) -> None:
    batch_id = start_batch(api_server.client(owners["alice"].key), 50, ["sim/echo"], name="kept")
    with httpx.Client(base_url=api_server.url, headers=HTML) as http:
        token = _sign_in(http, owners["alice"].key)
        elsewhere = {"origin": "https://evil.example", "sec-fetch-site": "cross-site"}
        refused = http.post(f"/batches/{batch_id}/cancel", data={"token": token}, headers=elsewhere)
        assert refused.status_code == 403
        assert "did not come from this orbatch page" in refused.text
        assert http.post(f"/batches/{batch_id}/cancel", data={"token": "guess"}).status_code == 403
        assert http.post(f"/batches/{batch_id}/cancel").status_code == 403
        assert "cancel" not in http.get(f"/batches/{batch_id}").text.split('id="status"')[1][:40]
        done = http.post(
            f"/batches/{batch_id}/cancel", data={"token": token}, headers={"origin": api_server.url}
        )
        assert done.status_code == 303
        assert done.headers["location"].endswith("?notice=cancelled")


async def test_signing_in_never_leaves_the_site_and_a_revoked_key_ends_the_session(
    api_server: ApiServer, owners: dict[str, NewKey], engine: AsyncEngine
) -> None:
    async with httpx.AsyncClient(base_url=api_server.url, headers=HTML) as http:
        for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
            answer = await http.post("/signin", data={"key": owners["bob"].key, "next": target})
            assert answer.headers["location"] == "/"
        assert (await http.get("/")).status_code == 200
        await revoke_key(engine, "bob")
        # The session's key is looked up at every page: a revoke ends it at once.
        assert (await http.get("/")).status_code == 303


def test_the_loopback_server_without_keys_shows_every_batch(
    open_server: ApiServer, api_server: ApiServer, owners: dict[str, NewKey]
) -> None:
    batch_id = start_batch(api_server.client(owners["alice"].key), 1, ["sim/echo"], name="an owner's batch")
    with httpx.Client(base_url=open_server.url, headers=HTML) as http:
        assert batch_id in http.get("/").text
        assert http.get(f"/batches/{batch_id}").status_code == 200
        assert http.get("/signin").headers["location"] == "/"


def test_metrics_on_the_server_move_with_a_batch_and_can_ask_for_a_token(
    api_server: ApiServer, open_server: ApiServer, owners: dict[str, NewKey]
) -> None:
    with httpx.Client(base_url=api_server.url) as http:
        before = http.get("/metrics")
        assert before.status_code == 200
        assert before.headers["content-type"].startswith("text/plain")
        finished = _sample(before.text, "orbatch_requests_finished_total", '{outcome="completed"}')
        client = api_server.client(owners["alice"].key)
        batch_id = start_batch(client, 12, ["sim/echo"], name="scraped")
        wait_for(client, batch_id)
        after = http.get("/metrics").text
    assert _sample(after, "orbatch_requests_finished_total", '{outcome="completed"}') >= finished + 12
    assert _sample(after, "orbatch_redis_up") == 1
    assert "orbatch_queue_depth" in after
    assert "orbatch_workers_alive" in after
    assert batch_id not in after
    with httpx.Client(base_url=open_server.url) as http:
        assert http.get("/metrics").status_code == 401
        assert http.get("/metrics", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert http.get("/metrics", headers={"authorization": "Bearer scrape-secret"}).status_code == 200
