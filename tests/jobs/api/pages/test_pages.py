"""The dashboard over HTTP as a script sees it: Bearer keys, owners kept apart, forms only from its own pages,
the live part alone on request, downloads, headers; and the server's `/metrics`."""

from __future__ import annotations

import asyncio
import html
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import orjson
import psutil
import pytest
from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.api.keys import NewKey, create_key, revoke_key
from tests.conftest import Services
from tests.jobs.api.conftest import ApiServer, api_env, batch_lines, jsonl, wait_for
from tests.jobs.api.pages.conftest import start_batch
from tests.support import Simulator, run_cli

pytestmark = pytest.mark.xdist_group("browser")

HTML = {"accept": "text/html"}


def _bearer(key: str) -> dict[str, str]:
    return {**HTML, "authorization": f"Bearer {key}"}


def _sample(text: str, name: str, labels: str = "") -> float:
    """The value of one sample in Prometheus text (0 when it is absent)."""
    pattern = rf"^{re.escape(name)}{re.escape(labels)} (\S+)$" if labels else rf"^{re.escape(name)} (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _text(html: str) -> str:
    """What a page shows of `html`: its text, without the tags and their attributes."""
    return re.sub(r"<[^>]+>", " ", html)


def _main(page: str) -> str:
    """The page's own content, without the head (its title) and the header."""
    return page.split("<main", 1)[1].split(">", 1)[1]


def _row(page: str, batch_id: str) -> str:
    """The list's row of one batch."""
    return page.split(f'data-batch="{batch_id}"', 1)[1].split("</tr>", 1)[0]


@pytest.fixture(scope="module")
def open_server(
    services: Services,
    database_url: str,
    queue_name: str,
    session_simulator: Simulator,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ApiServer]:
    """A `--no-auth` loopback server whose /metrics asks for a token."""
    env = api_env(
        services, database_url, session_simulator, queue_name, ORBATCH_METRICS_TOKEN="scrape-secret"
    )
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
        fleet = http.get("/fleet").text
        for shown in (
            "free requests used",
            # The suite's upstream is a simulator: its day is said as a simulated one.
            "Simulator: free tier this simulated day",
            "the simulated day (1d 0h of real time) resets at",
            "Pacing: one free request every",
            "jobs due now",
        ):
            assert shown in fleet
        assert 'id="in-flight"' in fleet
        assert 'id="queue-ready"' in fleet
        # Made on a server whose upstream is the simulator: simulated, and tagged so.
        assert '<span class="tag">simulated</span>' in http.get(f"/batches/{batch_id}").text
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
        # A page's query comes back too after signing in (the list's cursor, say).
        paged = http.get("/?before=batch_x", headers=HTML)
        assert paged.headers["location"] == "/signin?next=/%3Fbefore%3Dbatch_x"
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


async def test_a_batchs_priority_is_set_from_its_page(
    api_server: ApiServer, owners: dict[str, NewKey], simulator: Simulator
) -> None:
    # Slow answers, so the batch is still running while its page is used.
    await simulator.configure(latency_ms=1000)
    batch_id = start_batch(api_server.client(owners["alice"].key), 100, ["sim/echo"], name="later")
    async with httpx.AsyncClient(base_url=api_server.url, headers=HTML) as http:
        assert (await http.post("/signin", data={"key": owners["alice"].key, "next": "/"})).status_code == 303
        page = (await http.get(f"/batches/{batch_id}")).text
        assert 'id="set-priority"' in page
        token = re.search(r'name="token" value="([^"]+)"', page)
        assert token is not None
        form, origin = {"token": token.group(1)}, {"origin": api_server.url}
        done = await http.post(
            f"/batches/{batch_id}/priority", data={**form, "priority": "background"}, headers=origin
        )
        assert done.status_code == 303
        assert done.headers["location"].endswith("?notice=priority_background")
        shown = (await http.get(done.headers["location"])).text
        assert "Priority background: its next requests yield to every normal batch" in shown
        assert 'id="priority-tag">background<' in shown
        refused = await http.post(
            f"/batches/{batch_id}/priority", data={**form, "priority": "whenever"}, headers=origin
        )
        assert refused.status_code in (400, 422)
    kept = api_server.client(owners["alice"].key).batches.retrieve(batch_id)
    assert kept.model_extra["orbatch"]["priority"] == "background"  # type: ignore[index]


async def test_signing_in_never_leaves_the_site_and_a_revoked_key_ends_the_session(
    api_server: ApiServer, owners: dict[str, NewKey], engine: AsyncEngine, session_redis: ArqRedis
) -> None:
    async with httpx.AsyncClient(base_url=api_server.url, headers=HTML) as http:
        for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
            answer = await http.post("/signin", data={"key": owners["bob"].key, "next": target})
            assert answer.headers["location"] == "/"
        assert (await http.get("/")).status_code == 200
        # Redis keeps the session under a hash of its cookie, with the key's digest: neither secret is in it.
        cookie = http.cookies["orbatch_session"]
        stored = [(k, await session_redis.get(k)) for k in await session_redis.keys("*:session:*")]
        assert stored
        for name, value in stored:
            assert cookie.encode() not in name
            assert value is not None
            assert owners["bob"].key.encode() not in value
            assert cookie.encode() not in value
        await revoke_key(engine, "bob")
        # The session's key is looked up at every page: a revoke ends it at once.
        assert (await http.get("/")).status_code == 303


def api_server_env(server: ApiServer) -> dict[str, str]:
    """The environment a server was started with: a command line on the same services."""
    return dict(psutil.Process(server.process.pid).environ())


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


async def test_a_key_named_local_is_an_owner_like_any_other_on_a_server_with_keys(
    api_server: ApiServer, owners: dict[str, NewKey], engine: AsyncEngine
) -> None:
    batch_id = start_batch(api_server.client(owners["alice"].key), 1, ["sim/echo"], name="alice's")
    local = await create_key(engine, "local")
    async with httpx.AsyncClient(base_url=api_server.url, headers=_bearer(local.key)) as http:
        assert batch_id not in (await http.get("/")).text
        assert (await http.get(f"/batches/{batch_id}")).status_code == 404
        assert (await http.get(f"/batches/{batch_id}/results.jsonl")).status_code == 404
        assert (await http.post(f"/batches/{batch_id}/cancel")).status_code == 404


def test_a_batch_submitted_from_the_command_line_shows_only_where_no_keys_are_asked(
    api_server: ApiServer, open_server: ApiServer, owners: dict[str, NewKey], tmp_path: Path
) -> None:
    lines = tmp_path / "in.jsonl"
    lines.write_text('{"custom_id": "a", "messages": [{"role": "user", "content": "hi"}]}\n')
    submitted = run_cli(
        api_server_env(api_server), "submit", str(lines), "--models", "sim/echo", "--name", "from the shell"
    )
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.split()[0]
    with httpx.Client(base_url=api_server.url, headers=_bearer(owners["alice"].key)) as http:
        assert "from the shell" not in http.get("/").text
        assert http.get(f"/batches/{batch_id}").status_code == 404
        assert http.get("/batches/from the shell").status_code == 404
    with httpx.Client(base_url=open_server.url, headers=HTML) as http:
        assert "from the shell" in http.get("/").text
        assert http.get(f"/batches/{batch_id}").status_code == 200
        by_name = http.get("/batches/from the shell")
        assert by_name.status_code == 303
        assert by_name.headers["location"] == f"/batches/{batch_id}?by=name"


def test_the_server_without_keys_answers_only_to_loopback_names(open_server: ApiServer) -> None:
    port = open_server.url.rsplit(":", 1)[1]
    rebound = {**HTML, "host": f"rebind.evil.example:{port}", "origin": f"http://rebind.evil.example:{port}"}
    with httpx.Client(base_url=open_server.url) as http:
        for method, path in (
            ("GET", "/"),
            ("GET", "/fleet"),
            ("GET", "/v1/batches"),
            ("POST", "/batches/b/cancel"),
        ):
            refused = http.request(method, path, headers=rebound)
            assert refused.status_code == 403, (method, path)
            assert "answers only to a loopback name" in refused.text
        for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
            assert http.get("/", headers={**HTML, "host": host}).status_code == 200


def test_a_sign_in_posted_from_another_site_is_refused(
    api_server: ApiServer, owners: dict[str, NewKey]
) -> None:
    with httpx.Client(base_url=api_server.url, headers=HTML) as http:
        forged = http.post(
            "/signin",
            data={"key": owners["alice"].key, "next": "/"},
            headers={"origin": "https://evil.example", "sec-fetch-site": "cross-site"},
        )
        assert forged.status_code == 403
        assert "set-cookie" not in forged.headers


def test_a_refused_action_returns_to_the_batch_page_which_says_why_and_keeps_refreshing(
    api_server: ApiServer, owners: dict[str, NewKey]
) -> None:
    client = api_server.client(owners["alice"].key)
    batch_id = start_batch(client, 2, ["sim/echo"], name="done already")
    wait_for(client, batch_id)
    with httpx.Client(base_url=api_server.url, headers=HTML) as http:
        token = _sign_in(http, owners["alice"].key)
        refused = http.post(f"/batches/{batch_id}/cancel", data={"token": token})
        assert refused.status_code == 303
        assert refused.headers["location"] == f"/batches/{batch_id}?problem=cancel"
        page = http.get(refused.headers["location"]).text
        assert "This batch has ended: there is nothing to cancel." in page
        # The page's refreshes ask for its own address, without the words of the action.
        assert f'data-live-url="/batches/{batch_id}"' in page
        assert 'id="cancel"' not in page
        assert http.get(f"/batches/{batch_id}", headers={"x-orbatch-live": "1"}).status_code == 200


def test_retry_from_the_page_runs_the_failed_requests_again(
    api_server: ApiServer, owners: dict[str, NewKey], simulator: Simulator
) -> None:
    refuse = [{"match": "prompt of", "status": 400, "message": "refused <for> a test"}]
    asyncio.run(simulator.configure(rules=refuse))
    client = api_server.client(owners["alice"].key)
    batch_id = start_batch(client, 3, ["sim/echo"], name="refused lines")
    assert wait_for(client, batch_id).request_counts.failed == 3  # type: ignore[union-attr]
    with httpx.Client(base_url=api_server.url, headers=HTML) as http:
        token = _sign_in(http, owners["alice"].key)
        page = http.get(f"/batches/{batch_id}").text
        assert "Retry 3 failed" in page
        # Failures by error code with the latest message, escaped; calls per finished request.
        errors = page.split('id="errors"')[1].split("</table>")[0]
        assert "<code>400</code>" in errors
        assert "refused &lt;for&gt; a test" in errors
        tries = page.split('id="tries"')[1].split("</table>")[0]
        assert '<td class="num">1</td><td class="num">3</td>' in tries
        retried = http.post(f"/batches/{batch_id}/retry", data={"token": token})
        assert retried.headers["location"] == f"/batches/{batch_id}?notice=retried"
    # Each request is called once more, and fails again the same way.
    deadline = time.monotonic() + 60
    while client.batches.retrieve(batch_id).orbatch["calls"] < 6:  # type: ignore[index]
        assert time.monotonic() < deadline, "the retried requests were not called again"
        time.sleep(0.2)
    assert wait_for(client, batch_id).request_counts.failed == 3  # type: ignore[union-attr]


def test_a_batchs_page_says_how_many_answers_needed_a_correction(
    api_server: ApiServer, owners: dict[str, NewKey], simulator: Simulator
) -> None:
    broken = [
        {"match": f"prompt of fix{i}", "kind": "reply", "content": '{"label": "go', "times": 1}
        for i in (0, 1)
    ]
    asyncio.run(simulator.configure(rules=broken))
    schema = {"type": "object", "properties": {"label": {"enum": ["good", "bad"]}}, "required": ["label"]}
    asking = {"type": "json_schema", "json_schema": {"name": "label", "strict": True, "schema": schema}}
    client = api_server.client(owners["alice"].key)
    uploaded = client.files.create(
        file=("in.jsonl", jsonl(batch_lines(3, "fix", response_format=asking))), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_body={"models": ["sim/echo"], "feedback": True},
    )
    assert wait_for(client, batch.id).request_counts.completed == 3  # type: ignore[union-attr]
    with httpx.Client(base_url=api_server.url, headers=HTML) as http:
        _sign_in(http, owners["alice"].key)
        page = http.get(f"/batches/{batch.id}").text
    # Two of the three lines' first replies were broken; both answers came on the corrected retry.
    assert "2 answers needed a correction" in _text(page)


def test_a_batch_paused_on_its_budget_says_how_to_go_on_and_offers_no_resume_that_would_fail(
    api_server: ApiServer, owners: dict[str, NewKey]
) -> None:
    client = api_server.client(owners["alice"].key)
    batch_id = start_batch(client, 40, ["sim/echo"], name="on a budget", max_cost="0.00003")
    wait_for(client, batch_id, until=("in_progress",))
    with httpx.Client(base_url=api_server.url, headers=_bearer(owners["alice"].key)) as http:
        for _ in range(300):
            page = http.get(f"/batches/{batch_id}").text
            if 'class="status s-paused"' in page:
                break
            time.sleep(0.1)
        assert "budget:" in page
        assert "--max-cost USD" in page
        assert 'id="resume"' not in page


def test_the_list_pages_through_an_owners_batches_and_no_further(
    api_server: ApiServer, owners: dict[str, NewKey]
) -> None:
    bob = api_server.client(owners["bob"].key)
    made = [start_batch(bob, 1, ["sim/echo"], name=f"bob {i}") for i in range(22)]
    others = start_batch(api_server.client(owners["alice"].key), 1, ["sim/echo"], name="alice's")
    with httpx.Client(base_url=api_server.url, headers=_bearer(owners["bob"].key)) as http:
        first = http.get("/").text
        assert re.findall(r'data-batch="([^"]+)"', first) == made[::-1][:20]
        older = re.search(r'href="/\?before=([^"]+)" rel="next"', first)
        assert older is not None
        second = http.get(f"/?before={older.group(1)}").text
        assert re.findall(r'data-batch="([^"]+)"', second) == made[1::-1]
        assert 'rel="next"' not in second
        # Another owner's batch is no cursor: the page is empty, as for an id that never was.
        for cursor in (others, "batch_never"):
            assert re.findall(r'data-batch="([^"]+)"', http.get(f"/?before={cursor}").text) == []


def test_a_batchs_name_opens_the_latest_batch_of_that_name_the_viewer_may_see(
    api_server: ApiServer, owners: dict[str, NewKey]
) -> None:
    alice = api_server.client(owners["alice"].key)
    older = start_batch(alice, 1, ["sim/echo"], name="nightly summaries")
    latest = start_batch(alice, 1, ["sim/echo"], name="nightly summaries")
    # Another owner's batch of the same name, newer than both, is neither shown to alice nor counted for her.
    bobs = start_batch(api_server.client(owners["bob"].key), 1, ["sim/echo"], name="nightly summaries")
    with httpx.Client(base_url=api_server.url, headers=_bearer(owners["alice"].key)) as http:
        sent = http.get("/batches/nightly summaries")
        assert sent.status_code == 303
        assert sent.headers["location"] == f"/batches/{latest}?by=name"
        page = http.get(sent.headers["location"]).text
        assert '<h1 class="name">nightly summaries</h1>' in page
        assert latest in _text(_main(page))
        named = page.split('id="named">')[1].split("</p>")[0]
        assert "2 batches are named 'nightly summaries': this is the latest" in named
        # The page refreshes, and is bookmarked, by the batch's id: the name's note is said once.
        assert f'data-live-url="/batches/{latest}"' in page
        assert 'id="named"' not in http.get(f"/batches/{latest}").text
        # Arriving by name at an older batch of it (an old link) says which one is the latest.
        old_page = http.get(f"/batches/{older}?by=name").text
        assert f'the latest is <a href="/batches/{latest}">{latest}</a>' in old_page
    with httpx.Client(base_url=api_server.url, headers=_bearer(owners["bob"].key)) as http:
        sent = http.get("/batches/nightly summaries")
        assert sent.headers["location"] == f"/batches/{bobs}?by=name"
        # Bob has one batch of that name: nothing to say about others.
        assert 'id="named"' not in http.get(sent.headers["location"]).text


def test_a_name_with_slashes_opens_its_batch_and_downloads_still_go_by_id(
    api_server: ApiServer, owners: dict[str, NewKey]
) -> None:
    client = api_server.client(owners["alice"].key)
    batch_id = start_batch(client, 2, ["sim/echo"], name="evals/2026-11/run 1")
    wait_for(client, batch_id)
    with httpx.Client(base_url=api_server.url, headers=_bearer(owners["alice"].key)) as http:
        sent = http.get("/batches/evals/2026-11/run%201")
        assert sent.status_code == 303
        assert sent.headers["location"] == f"/batches/{batch_id}?by=name"
        results = http.get(f"/batches/{batch_id}/results.jsonl")
        assert results.headers["content-disposition"].startswith("attachment")
        assert len(results.text.splitlines()) == 2


def test_a_name_that_matches_no_batch_the_viewer_may_see_is_a_404_page_that_says_so(
    api_server: ApiServer, owners: dict[str, NewKey]
) -> None:
    start_batch(api_server.client(owners["alice"].key), 1, ["sim/echo"], name="alice's secret <b>plan</b>")
    with httpx.Client(base_url=api_server.url, headers=_bearer(owners["bob"].key)) as http:
        # A name no batch has, and a name only another owner's batch has, answer the same.
        for name, shown in (
            ("never made", "never made"),
            ("alice's secret <b>plan</b>", "alice&#39;s secret &lt;b&gt;plan&lt;/b&gt;"),
        ):
            missing = http.get(f"/batches/{name}")
            assert missing.status_code == 404, name
            assert missing.headers["content-type"].startswith("text/html")
            assert f"No batch found with the id or name &#39;{shown}&#39;." in missing.text
    with httpx.Client(base_url=api_server.url, headers=HTML) as http:
        # A browser that has not signed in is asked to first, whatever the name.
        assert http.get("/batches/never made").headers["location"].startswith("/signin?next=")


def test_an_unnamed_batch_shows_its_id_once_and_a_named_one_shows_its_name_and_id(
    api_server: ApiServer, owners: dict[str, NewKey]
) -> None:
    client = api_server.client(owners["alice"].key)
    unnamed = start_batch(client, 1, ["sim/echo"])
    named = start_batch(client, 1, ["sim/echo"], name="labelled")
    with httpx.Client(base_url=api_server.url, headers=_bearer(owners["alice"].key)) as http:
        listed = http.get("/").text
        assert _text(_row(listed, unnamed)).count(unnamed) == 1
        assert _text(_row(listed, named)).count(named) == 1
        assert "labelled" in _text(_row(listed, named))
        for batch_id in (unnamed, named):
            page = _text(_main(http.get(f"/batches/{batch_id}").text))
            assert page.count(batch_id) == 1, batch_id
        assert f'<h1 class="name">{unnamed}</h1>' in http.get(f"/batches/{unnamed}").text


def test_the_list_says_when_each_batch_was_created_as_its_page_does(
    api_server: ApiServer, owners: dict[str, NewKey]
) -> None:
    client = api_server.client(owners["alice"].key)
    batch_id = start_batch(client, 1, ["sim/echo"], name="dated")
    created = datetime.fromtimestamp(client.batches.retrieve(batch_id).created_at, UTC)
    when = f"{created:%Y-%m-%d %H:%M:%S} UTC"
    with httpx.Client(base_url=api_server.url, headers=_bearer(owners["alice"].key)) as http:
        listed = http.get("/").text
        assert "<th>Created</th>" in listed
        assert f'<td class="created">{when}</td>' in _row(listed, batch_id)
        assert f"created {when}" in http.get(f"/batches/{batch_id}").text


def test_a_batchs_page_shows_what_it_was_estimated_to_cost_beside_what_it_spent(
    api_server: ApiServer, owners: dict[str, NewKey]
) -> None:
    client = api_server.client(owners["alice"].key)
    batch_id = start_batch(client, 3, ["openai/gpt-4o-mini"], name="estimated")
    wait_for(client, batch_id)
    kept = client.get(f"/batches/{batch_id}", cast_to=httpx.Response).json()["orbatch"]["estimate"]
    low, high = Decimal(kept["cost"]["live"]["low"]), Decimal(kept["cost"]["live"]["high"])
    with httpx.Client(base_url=api_server.url, headers=_bearer(owners["alice"].key)) as http:
        page = http.get(f"/batches/{batch_id}").text
    assert f'<span id="estimate">estimated ${low:.6f} to ${high:.6f}</span>' in page


def test_a_batch_submitted_with_a_gold_field_shows_its_score_on_its_page(
    api_server: ApiServer, open_server: ApiServer, tmp_path: Path
) -> None:
    records = tmp_path / "reviews.jsonl"
    records.write_bytes(
        b"".join(orjson.dumps({"text": f"review {i}", "truth": "good"}) + b"\n" for i in range(6))
    )
    schema = tmp_path / "label.json"
    schema.write_bytes(
        orjson.dumps({"type": "object", "properties": {"label": {"type": "string", "enum": ["good", "bad"]}}})
    )
    env = api_server_env(api_server)
    submitted = run_cli(
        env, "submit", str(records), "--template", "Label: {text}", "--json-schema", str(schema),
        "--vote", "sim/echo,sim/backup", "--gold", "truth", "--json",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    batch_id = orjson.loads(submitted.stdout)["id"]
    deadline = time.monotonic() + 120
    while (shown := orjson.loads(run_cli(env, "status", batch_id, "--json").stdout))["status"] != "completed":
        assert time.monotonic() < deadline, shown
        time.sleep(0.2)
    expected = orjson.loads(run_cli(env, "score", batch_id, "--gold", "truth", "--json").stdout)
    with httpx.Client(base_url=open_server.url, headers=HTML) as http:
        page = " ".join(html.unescape(_text(http.get(f"/batches/{batch_id}").text)).split())
    assert "Score against truth" in page
    assert f"accuracy {expected['accuracy'] * 100:.1f}%" in page
    assert "6 records scored on label" in page
    assert "Cohen's kappa" in page
    for model in ("sim/echo", "sim/backup"):
        assert model in page
