"""`orbatch keys` as an operator types it, and what a key (or --no-auth) lets a client do."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator

import openai
import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from jobs.api.keys import find_caller
from tests.conftest import Services
from tests.jobs.api.conftest import ApiServer, api_env, batch_lines, jsonl
from tests.support import Simulator, run_cli


@pytest.fixture
async def no_keys(engine: AsyncEngine) -> AsyncEngine:
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE api_key, api_file, api_file_chunk"))
    return engine


async def test_a_key_is_printed_once_stored_as_a_hash_listed_by_its_start_and_revoked(
    env: dict[str, str], no_keys: AsyncEngine
) -> None:
    made = run_cli(env, "keys", "create", "dave", "--json")
    assert made.returncode == 0, made.stderr
    shown = orjson.loads(made.stdout)
    assert set(shown) == {"name", "key", "callback_secret"}
    assert shown["name"] == "dave"
    key = shown["key"]
    assert key.startswith("obk_")
    assert len(key) >= 40
    async with no_keys.connect() as conn:
        row = (await conn.execute(text("SELECT * FROM api_key WHERE name = 'dave'"))).one()
        assert row.digest == hashlib.sha256(key.encode()).hexdigest()
        assert key not in " ".join(str(v) for v in row)
        assert (await find_caller(conn, key)) is not None

    listed = run_cli(env, "keys", "list", "--json")
    [entry] = orjson.loads(listed.stdout)
    assert entry["name"] == "dave"
    assert entry["revoked_at"] is None
    assert key.startswith(entry["hint"].rstrip("…"))
    assert key not in listed.stdout
    assert "dave" in run_cli(env, "keys", "list").stdout

    again = run_cli(env, "keys", "create", "dave")
    assert again.returncode == 2
    assert "already has a key" in again.stderr

    revoked = run_cli(env, "keys", "revoke", "dave")
    assert revoked.returncode == 0, revoked.stderr
    async with no_keys.connect() as conn:
        assert await find_caller(conn, key) is None
    assert orjson.loads(run_cli(env, "keys", "list", "--json").stdout)[0]["revoked_at"] is not None
    twice = run_cli(env, "keys", "revoke", "dave")
    assert twice.returncode == 2
    assert "already revoked" in twice.stderr
    unknown = run_cli(env, "keys", "revoke", "nobody")
    assert unknown.returncode == 2
    assert "no key named 'nobody'" in unknown.stderr
    bad_name = run_cli(env, "keys", "create", "<script>")
    assert bad_name.returncode == 2
    assert "cannot name a key" in bad_name.stderr

    # A new key for the same owner: the plain output is the key on stdout, the rest on stderr.
    renewed = run_cli(env, "keys", "create", "dave")
    assert renewed.returncode == 0
    new_key = renewed.stdout.strip()
    assert new_key.startswith("obk_")
    assert new_key != key
    async with no_keys.connect() as conn:
        caller = await find_caller(conn, new_key)
    assert caller is not None
    assert caller.owner == "dave"


async def test_a_new_key_for_an_owner_sees_what_its_revoked_key_made(
    api_server: ApiServer, env: dict[str, str], no_keys: AsyncEngine
) -> None:
    first = orjson.loads(run_cli(env, "keys", "create", "erin", "--json").stdout)["key"]
    uploaded = api_server.client(first).files.create(
        file=("in.jsonl", jsonl(batch_lines(1))), purpose="batch"
    )
    assert run_cli(env, "keys", "revoke", "erin").returncode == 0
    # An instance trusts a key it looked up for twice ORBATCH_API_KEY_CACHE_SECONDS (2 s in all), no longer.
    deadline = time.monotonic() + 5
    with pytest.raises(openai.AuthenticationError):  # noqa: PT012 (polls until the revocation is seen)
        while time.monotonic() < deadline:
            api_server.client(first).files.list()
            await asyncio.sleep(0.2)
    second = orjson.loads(run_cli(env, "keys", "create", "erin", "--json").stdout)["key"]
    assert [f.id for f in api_server.client(second).files.list()] == [uploaded.id]


def test_no_auth_is_refused_unless_the_server_listens_on_loopback(env: dict[str, str]) -> None:
    for host in ("0.0.0.0", "192.0.2.10", "::"):  # noqa: S104 (each is refused, none is bound)
        refused = run_cli(env, "serve", "--host", host, "--no-auth", "--no-worker")
        assert refused.returncode == 2
        assert "--no-auth is only for a server on a loopback address" in refused.stderr


@pytest.fixture
def open_server(
    services: Services,
    database_url: str,
    queue_name: str,
    simulator: Simulator,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ApiServer]:
    api = ApiServer(
        api_env(services, database_url, simulator, queue_name),
        tmp_path_factory.mktemp("open") / "serve.log",
        "--no-auth",
    )
    yield api
    assert api.stop() == 0


async def test_without_auth_on_loopback_every_request_is_the_owner_local(
    open_server: ApiServer, env: dict[str, str], no_keys: AsyncEngine
) -> None:
    anyone = open_server.client("anything")
    uploaded = anyone.files.create(file=("in.jsonl", jsonl(batch_lines(1))), purpose="batch")
    assert [f.id for f in open_server.client("something else").files.list()] == [uploaded.id]
    # A key for `local` sees the same files on a server that asks for keys.
    async with no_keys.connect() as conn:
        owner = (
            await conn.execute(text("SELECT owner FROM api_file WHERE id = :id"), {"id": uploaded.id})
        ).scalar_one()
    assert owner == "local"
