"""Completion callbacks: POSTed once, signed so OpenAI's SDK verifies them, retried, only to allowed hosts."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import orjson
import pytest
from openai import OpenAI
from openai.types import Batch
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.api.keys import NewKey
from tests.conftest import Services
from tests.jobs.api.conftest import ApiServer, api_env, batch_lines, jsonl, wait_for
from tests.support import Simulator, until, wait_until


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A webhook receiver on loopback: records every POST; `/flaky` answers 500 twice first, `/moved` 302."""

    hits: list[Hit] = field(default_factory=list)
    port: int = 0

    def posts(self, path: str) -> list[Hit]:
        return [h for h in self.hits if h.path == path]

    def wait_for(self, path: str, count: int, seconds: float = 30) -> list[Hit]:
        deadline = time.monotonic() + seconds
        while len(self.posts(path)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.posts(path))} callbacks to {path}, wanted {count}")
            time.sleep(0.05)
        return self.posts(path)

    def wait_for_batch(self, path: str, batch_id: str, seconds: float = 30) -> Hit:
        """The callback of `batch_id` to `path`, once it has arrived."""
        return wait_until(
            lambda: next((h for h in self.posts(path) if orjson.loads(h.body)["id"] == batch_id), None),
            f"the callback of {batch_id} to {path}",
            seconds,
        )


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    found = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            found.hits.append(
                Hit(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic())
            )
            if self.path == "/moved":
                self.send_response(302)
                self.send_header("Location", f"http://127.0.0.1:{found.port}/elsewhere")
            elif self.path == "/flaky" and len(found.posts("/flaky")) <= 2:
                self.send_response(500)
            else:
                self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    found.port = http.server_address[1]
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield found
    http.shutdown()
    http.server_close()


def _env(
    services: Services, database_url: str, simulator: Simulator, queue_name: str, receiver: Receiver
) -> dict[str, str]:
    return api_env(
        services,
        database_url,
        simulator,
        queue_name,
        ORBATCH_CALLBACK_ALLOW=f"127.0.0.1:{receiver.port}",
        ORBATCH_CALLBACK_RETRY_BASE_SECONDS="1",
    )


@pytest.fixture(scope="module")
def server(
    services: Services,
    database_url: str,
    queue_name: str,
    session_simulator: Simulator,
    receiver: Receiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ApiServer]:
    api = ApiServer(
        _env(services, database_url, session_simulator, queue_name, receiver),
        tmp_path_factory.mktemp("cb") / "serve.log",
    )
    yield api
    assert api.stop() == 0


def _batch(client: OpenAI, lines: int = 3, **extra: Any) -> Batch:
    uploaded = client.files.create(file=("in.jsonl", jsonl(batch_lines(lines))), purpose="batch")
    return client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_body={"models": ["sim/echo"], **extra},
    )


async def _delivered(engine: AsyncEngine, batch_ids: list[str]) -> list[Any]:
    """The callback rows of these batches once every one is recorded as delivered, else an empty list."""
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT batch_id, attempts, delivered_at FROM api_callback WHERE batch_id = ANY(:ids)"),
                {"ids": batch_ids},
            )
        ).all()
    return list(rows) if len(rows) == len(batch_ids) and all(r.delivered_at for r in rows) else []


def _delivered_by(instances: list[ApiServer], batch_id: str) -> ApiServer | None:
    """The instance whose log says it delivered the callback of `batch_id`."""
    for instance in instances:
        for line in instance.log().splitlines():
            if '"callback delivered"' in line and orjson.loads(line).get("batch") == batch_id:
                return instance
    return None


def later_rounds(
    instances: list[ApiServer], client: OpenAI, receiver: Receiver, rounds: int = 1, seconds: float = 90
) -> None:
    """Return once each instance has run `rounds` rounds of sending callbacks that began after this call did.

    The evidence is a callback of its own: a one-line batch whose callback goes to `/tick`, made only once the
    previous one arrived, so each is sent in a later round than the one before (one instance runs its rounds one
    after another, MAINTENANCE_SECONDS apart). Whichever instance sends one says so in its log. A callback that
    was due again would have been sent in any of these rounds: that is the window a test of "not sent again"
    covers.
    """
    sent = {id(instance): 0 for instance in instances}
    deadline = time.monotonic() + seconds
    while min(sent.values()) < rounds:
        assert time.monotonic() < deadline, f"callback rounds seen per instance: {sent}"
        tick = _batch(client, lines=1, callback_url=f"http://127.0.0.1:{receiver.port}/tick")
        receiver.wait_for_batch("/tick", tick.id)
        sender = wait_until(
            lambda tick_id=tick.id: _delivered_by(instances, tick_id), f"the log line of {tick.id}'s callback"
        )
        sent[id(sender)] += 1


async def test_the_final_batch_object_is_posted_once_and_the_openai_sdk_verifies_its_signature(
    server: ApiServer, receiver: Receiver, owners: dict[str, NewKey], engine: AsyncEngine
) -> None:
    url = f"http://127.0.0.1:{receiver.port}/done"
    client = server.client(owners["alice"].key)
    batch = _batch(client, callback_url=url)
    assert batch.model_extra is not None
    assert batch.model_extra["orbatch"]["callback_url"] == url
    final = await asyncio.to_thread(wait_for, client, batch.id)
    [hit] = await asyncio.to_thread(receiver.wait_for, "/done", 1)
    client.webhooks.verify_signature(hit.body, hit.headers, secret=owners["alice"].callback_secret)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.verify_signature(hit.body, hit.headers, secret=owners["bob"].callback_secret)
    posted = Batch.model_validate(orjson.loads(hit.body), strict=True)
    assert posted.id == batch.id
    assert posted.status == "completed"
    assert posted.output_file_id == final.output_file_id
    assert hit.headers["webhook-id"] == f"msg_{batch.id}"
    # Sent once: recorded as delivered at the first attempt, and not sent again in the next three rounds of
    # callbacks (two seconds and more, past the 1 s a retry would have waited).
    [row] = await until(lambda: _delivered(engine, [batch.id]), "the callback recorded as delivered")
    assert row.attempts == 1
    await asyncio.to_thread(later_rounds, [server], server.client(owners["bob"].key), receiver, 3)
    assert len(receiver.posts("/done")) == 1


async def test_a_failing_receiver_is_retried_with_backoff_under_the_same_webhook_id(
    server: ApiServer, receiver: Receiver, owners: dict[str, NewKey], engine: AsyncEngine
) -> None:
    client = server.client(owners["alice"].key)
    batch = _batch(client, metadata={"callback_url": f"http://127.0.0.1:{receiver.port}/flaky"})
    hits = await asyncio.to_thread(receiver.wait_for, "/flaky", 3)
    assert len({h.headers["webhook-id"] for h in hits}) == 1
    # 1 s, then 2 s (each on the next maintenance round): the wait doubles.
    first, second = hits[1].at - hits[0].at, hits[2].at - hits[1].at
    assert 0.9 < first < second
    # The third attempt, taken, is recorded as the delivery; the next two rounds send nothing more.
    [row] = await until(lambda: _delivered(engine, [batch.id]), "the callback recorded as delivered")
    assert row.attempts == 3
    await asyncio.to_thread(later_rounds, [server], server.client(owners["bob"].key), receiver, 2)
    assert len(receiver.posts("/flaky")) == 3


async def test_a_redirect_is_not_followed(
    server: ApiServer, receiver: Receiver, owners: dict[str, NewKey], engine: AsyncEngine
) -> None:
    batch = _batch(server.client(owners["alice"].key), callback_url=f"http://127.0.0.1:{receiver.port}/moved")
    receiver.wait_for("/moved", 2)
    assert receiver.posts("/elsewhere") == []
    async with engine.connect() as conn:
        error = (
            await conn.execute(
                text("SELECT last_error FROM api_callback WHERE batch_id = :id"), {"id": batch.id}
            )
        ).scalar_one()
    assert error.startswith("HTTP 302")


def test_a_callback_to_a_host_the_server_may_not_call_is_refused_at_create(
    server: ApiServer, owners: dict[str, NewKey]
) -> None:
    client = server.client(owners["alice"].key)
    for url in ("http://169.254.169.254/latest/meta-data", "http://127.0.0.1:5432/", "file:///etc/passwd"):
        with pytest.raises(openai.BadRequestError) as caught:
            _batch(client, callback_url=url)
        assert caught.value.param == "callback_url"  # type: ignore[attr-defined]
    assert client.batches.list().data == []


async def test_several_api_instances_send_each_callback_exactly_once(
    server: ApiServer,
    receiver: Receiver,
    owners: dict[str, NewKey],
    engine: AsyncEngine,
    services: Services,
    database_url: str,
    queue_name: str,
    simulator: Simulator,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    env = _env(services, database_url, simulator, queue_name, receiver)
    others = [
        ApiServer(env, tmp_path_factory.mktemp("cb") / f"other-{i}.log", "--no-worker") for i in range(2)
    ]
    try:
        clients = [s.client(owners["bob"].key) for s in (server, *others)]
        made = [
            _batch(clients[i % 3], callback_url=f"http://127.0.0.1:{receiver.port}/once") for i in range(6)
        ]
        for batch in made:
            await asyncio.to_thread(wait_for, clients[0], batch.id)
        await asyncio.to_thread(receiver.wait_for, "/once", 6)
        rows = await until(lambda: _delivered(engine, [b.id for b in made]), "every callback recorded")
        assert [r.attempts for r in rows] == [1] * 6
        # A second instance sending one of them too would have posted it by the end of the round it was in:
        # every instance has since run a round of its own.
        await asyncio.to_thread(later_rounds, [server, *others], clients[0], receiver)
        ids = sorted(orjson.loads(h.body)["id"] for h in receiver.posts("/once"))
        assert ids == sorted(b.id for b in made)
    finally:
        for other in others:
            assert other.stop() == 0
