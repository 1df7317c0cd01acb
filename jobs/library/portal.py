"""One event loop on a thread of its own runs the front's work, whoever calls: a script, a thread, a notebook.

A notebook's kernel already runs an event loop on the main thread, where `asyncio.run` refuses to start
another; the front's database engine, worker and simulator live on this loop instead, and a caller waits for
them (blocking, or awaiting from its own loop) while showing progress from its own thread, where a notebook
expects its output.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from worker.shutdown import GracefulStop

__all__ = ["Portal", "StopSwitch"]

T = TypeVar("T")

# How often a waiting caller wakes to show progress (and to be interruptible on every platform).
TICK_SECONDS = 0.25


class StopSwitch:
    """How a caller's interrupt reaches the work on the portal: first a graceful stop, then a stop now.

    Before the work has a worker (while the data goes in), an interrupt cancels it: nothing is stored.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._target: GracefulStop | None = None
        self._task: asyncio.Task[Any] | None = None
        self.requests = 0

    def bind_task(self) -> None:
        """Called on the portal by the work itself: the task a stop cancels before a worker runs."""
        self._task = asyncio.current_task()

    @contextlib.contextmanager
    def hook(self, stop: GracefulStop) -> Any:
        """The work's StopHook: stops go to the worker while it runs (one already asked is passed on)."""
        self._target = stop
        for _ in range(self.requests):
            stop.request()
        try:
            yield
        finally:
            self._target = None

    def request(self) -> None:
        """Ask for a stop, from any thread."""
        self._loop.call_soon_threadsafe(self._on_loop)

    def _on_loop(self) -> None:
        self.requests += 1
        if self._target is not None:
            self._target.request()
        elif self._task is not None and self.requests > 0:
            self._task.cancel()


class Portal:
    """The background loop, started on first use and stopped by `close()`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop, started if it is not running."""
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def serve() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                # A daemon thread: an interpreter exiting without `close()` is not held by it (atexit closes).
                thread = threading.Thread(target=serve, name="orbatch-portal", daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    def on_portal(self) -> bool:
        """True when called from the portal's own thread (where waiting on it would deadlock)."""
        return self._thread is not None and threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start `coro` on the portal."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(
        self,
        work: Callable[[StopSwitch], Coroutine[Any, Any, T]],
        tick: Callable[[], None] = lambda: None,
    ) -> T:
        """Run `work` on the portal and wait for it, calling `tick` between waits (to show progress).

        A KeyboardInterrupt while waiting (Ctrl-C in a script, a notebook's interrupt) asks the work to stop
        gracefully, a second one to stop now; the work's own end (its result or error) is then what returns.
        """
        switch = StopSwitch(self.loop)
        future = self.submit(work(switch))
        while True:
            try:
                result = future.result(timeout=TICK_SECONDS)
            except concurrent.futures.TimeoutError:
                tick()
                continue
            except KeyboardInterrupt:
                switch.request()
                continue
            tick()
            return result

    async def acall(
        self,
        work: Callable[[StopSwitch], Coroutine[Any, Any, T]],
        tick: Callable[[], None] = lambda: None,
    ) -> T:
        """`call` for a caller with its own loop: awaited there, cancelled as an interrupt."""
        switch = StopSwitch(self.loop)
        waiting = asyncio.wrap_future(self.submit(work(switch)))
        while True:
            try:
                result = await asyncio.wait_for(asyncio.shield(waiting), TICK_SECONDS)
            except TimeoutError:
                tick()
                continue
            except (asyncio.CancelledError, KeyboardInterrupt):
                # The caller's task was cancelled (a notebook's interrupt of an async cell): the work stops
                # gracefully and its end is awaited, so what it paid for is recorded before the caller goes on.
                switch.request()
                with contextlib.suppress(Exception):
                    await asyncio.shield(waiting)
                raise
            tick()
            return result

    def close(self) -> None:
        """Stop the loop and its thread."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_wind_down(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        if thread is not threading.current_thread():
            thread.join(timeout=10)
        if not loop.is_running():
            loop.close()


async def _wind_down() -> None:
    """Cancel what is still running on the portal and close its generators, so that no connection is left open."""
    loop = asyncio.get_running_loop()
    tasks = [t for t in asyncio.all_tasks(loop) if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await loop.shutdown_asyncgens()
