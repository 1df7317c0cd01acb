"""Checking replies against their JSON schema in a child process, so a pathological check is bounded in time.

A schema's `pattern` with catastrophic backtracking (or `uniqueItems` over a huge array) can hold the CPU for
minutes, and Python's regular expressions keep the GIL while they run: checked in the worker's own process, it
would stall the event loop, let leases lapse and get calls paid twice. The child is killed when a check takes
longer than the limit and a new one is started for the next check.

Run as `python -m worker.replycheck`, the module is the child: length-prefixed JSON requests on stdin, answers on
stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import sys
from typing import TYPE_CHECKING, Any

import orjson

from jobs.core.logs import get_logger

if TYPE_CHECKING:
    from worker.classify import Failure, Success

__all__ = ["ReplyChecker", "check_reply", "checked_answer"]

log = get_logger(__name__)

_LENGTH = struct.Struct(">I")
# How long a new child may take to start (a Python and jsonschema imported) before it says it is ready. Its
# start is not part of a check's limit: on a loaded machine it alone can take more than a check may, and a valid
# reply would then be refused (and its request called again).
STARTUP_SECONDS = 60.0
_READY = b"{}"
# Checks of one reply when its child dies under it: a crash once is the child's, twice is likely the reply's.
CHECK_TRIES = 2


def check_reply(schema_json: bytes, content: str | None) -> str | None:
    """Why the reply does not satisfy the schema, None when it does; a schema that cannot check says so."""
    from jobs.formats.structured import reply_problem

    try:
        return reply_problem(orjson.loads(schema_json), content)
    except (
        Exception
    ) as exc:  # a schema that cannot be applied (an unresolvable $ref, say) is the reply's failure
        return f"the request's schema cannot check the reply ({type(exc).__name__}: {exc})"[:500]


class ReplyChecker:
    """One child process that checks replies, one at a time, each within `timeout` seconds."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._child: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def _start(self) -> asyncio.subprocess.Process:
        if self._child is None or self._child.returncode is not None:
            self._child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "worker.replycheck",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                # A session of its own: a terminal's Ctrl-C reaches the whole foreground process group, and a
                # checker killed by it while the worker lets its calls in flight finish would refuse their
                # valid replies (paid for, then called again). It ends when the worker closes its stdin or
                # kills it, and when the worker dies (its stdin closes).
                start_new_session=True,
            )
            assert self._child.stdout is not None
            # The child says it is ready once its imports are done; only then does a check's clock start.
            size = _LENGTH.unpack(
                await asyncio.wait_for(self._child.stdout.readexactly(_LENGTH.size), STARTUP_SECONDS)
            )[0]
            await self._child.stdout.readexactly(size)
        return self._child

    async def _ask(self, child: asyncio.subprocess.Process, message: bytes) -> str | None:
        assert child.stdin is not None
        assert child.stdout is not None
        child.stdin.write(_LENGTH.pack(len(message)) + message)
        await child.stdin.drain()
        size = _LENGTH.unpack(await child.stdout.readexactly(_LENGTH.size))[0]
        answer: Any = orjson.loads(await child.stdout.readexactly(size))
        return answer["problem"] if isinstance(answer, dict) else None

    async def check(self, schema: dict[str, Any], content: str | None) -> str | None:
        """Why the reply does not follow the schema (a short message), or None when it does."""
        message = orjson.dumps(
            {"schema": orjson.dumps(schema, option=orjson.OPT_SORT_KEYS).decode(), "content": content}
        )
        async with self._lock:
            # A child that died under a check (killed from outside) says nothing of the reply: the check runs
            # again on a new one, once, before the reply is refused for it.
            for tries in range(CHECK_TRIES, 0, -1):
                try:
                    child = await self._start()
                    return await asyncio.wait_for(self._ask(child, message), self.timeout)
                except TimeoutError:
                    await self._kill()
                    return (
                        f"checking the reply against its schema took longer than {self.timeout:g} s (a `pattern` "
                        "that backtracks on this reply?); the reply was not accepted"
                    )
                except (OSError, asyncio.IncompleteReadError) as exc:
                    await self._kill()
                    log.warning("the reply checker failed; starting a new one", error=str(exc))
                    if tries == 1:
                        return f"the reply could not be checked against its schema ({type(exc).__name__})"
            raise AssertionError("unreachable")

    async def _kill(self) -> None:
        child, self._child = self._child, None
        if child is not None and child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()

    async def aclose(self) -> None:
        """Stop the child."""
        await self._kill()


async def checked_answer(checker: ReplyChecker, body: dict[str, Any], success: Success) -> Success | Failure:
    """An answer to a request that asked for a JSON schema counts only if it follows it; else it is retried as
    `invalid_output`, its reply kept for the correction turn. A call's answer and a remote batch's line alike."""
    # Imported here: the child process (`python -m worker.replycheck`) starts lean, without the HTTP client's.
    from jobs.core.states import Outcome
    from jobs.formats.structured import quoted_reply, requested_schema
    from worker.classify import Failure

    schema = requested_schema(body)
    if schema is None:
        return success
    problem = await checker.check(schema, success.content)
    if problem is None:
        return success
    return Failure(
        Outcome.RETRY,
        "invalid_output",
        problem,
        success.status,
        model=success.model,
        provider=success.provider,
        generation_id=success.generation_id,
        usage=success.usage,
        reply=quoted_reply(success.content),
    )


def _serve() -> None:
    """The child's loop: say it is ready, then read a request, answer it, until stdin closes."""
    from jobs.formats.structured import reply_problem  # noqa: F401 - imported before saying it is ready

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    stdout.write(_LENGTH.pack(len(_READY)) + _READY)
    stdout.flush()
    while True:
        header = stdin.read(_LENGTH.size)
        if len(header) < _LENGTH.size:
            return
        request = orjson.loads(stdin.read(_LENGTH.unpack(header)[0]))
        problem = check_reply(request["schema"].encode(), request["content"])
        answer = orjson.dumps({"problem": problem})
        stdout.write(_LENGTH.pack(len(answer)) + answer)
        stdout.flush()


if __name__ == "__main__":
    _serve()
