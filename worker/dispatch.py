"""arq's Worker, claiming every job its free slots can take in one Redis round trip instead of four per job."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker

from jobs.core.constants import REDIS_SPARE_SECONDS

__all__ = ["ClaimingWorker"]

# arq starts a job with WATCH, EXISTS, ZSCORE and MULTI/SET/EXEC, one job at a time: four round trips per job,
# in series on the worker's loop. This script does the same checks and sets the same in-progress key for many
# jobs atomically. KEYS: the queue. ARGV: now (ms), in-progress TTL (ms), how many to claim, then job ids.
# The in-progress keys are built here (as arq names them), which only a Redis Cluster would object to; arq's
# own job start does not work on a cluster either.
_CLAIM_LUA = (
    """
local want = tonumber(ARGV[3])
local claimed = {}
for i = 4, #ARGV do
  if #claimed >= want * 2 then break end
  local id = ARGV[i]
  local key = '"""
    + in_progress_key_prefix
    + """' .. id
  if redis.call('EXISTS', key) == 0 then
    local score = redis.call('ZSCORE', KEYS[1], id)
    if score and tonumber(score) <= tonumber(ARGV[1]) then
      redis.call('SET', key, '1', 'PX', ARGV[2])
      claimed[#claimed + 1] = id
      claimed[#claimed + 1] = score
    end
  end
end
return claimed
"""
)


class ClaimingWorker(Worker):
    """A Worker whose `start_jobs` claims jobs in bulk; everything else (running, retries, results) is arq's.

    It overrides an arq internal, so arq is pinned to one version (pyproject) and
    `tests/worker/test_dispatch.py::test_the_arq_internals_the_claim_relies_on_are_as_pinned` fails loudly if an
    upgrade changes what this relies on: `start_jobs(job_ids)` as the step between reading the queue and
    running a job; the `in-progress` key prefix and its TTL (`in_progress_timeout_s`); `sem`, `job_counter`,
    `tasks`, `run_job(job_id, score)` and `_release_sem_dec_counter_on_complete`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._claim: Any = None
        # The startup moves a fleet worker to its upstream kind's queue once it knows the kind (GET /key).
        self.ctx["arq_worker"] = self

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """Claim up to the free slots' worth of the given jobs that no worker runs yet, and start them."""
        free = self.max_jobs - self.job_counter
        if free <= 0 or not job_ids:
            return
        if self._claim is None:
            self._claim = self.pool.register_script(_CLAIM_LUA)
        ttl_ms = int(self.in_progress_timeout_s * 1000)
        claimed = await self._claim(
            keys=[self.queue_name], args=[timestamp_ms(), ttl_ms, free, *(j.decode() for j in job_ids)]
        )
        for i in range(0, len(claimed), 2):
            job_id = claimed[i].decode()
            score = int(float(claimed[i + 1]))
            # Never blocks: a slot was free for each claim, and only this loop starts jobs.
            await self.sem.acquire()
            self.job_counter += 1
            task = self.loop.create_task(self.run_job(job_id, score))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    async def finish_job(self, job_id: str, *args: Any, **kwargs: Any) -> None:
        """arq's bookkeeping after a job, bounded in time: the job's result is in Postgres already, and a key
        left behind lapses or is skipped (a job id is never used for another attempt)."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(REDIS_SPARE_SECONDS):
                await super().finish_job(job_id, *args, **kwargs)

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        """arq's bookkeeping after a job that could not start, bounded in time as `finish_job` is."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(REDIS_SPARE_SECONDS):
                await super().finish_failed_job(job_id, result_data)

    async def close(self) -> None:
        """arq's close, but a Redis that no longer answers is not waited for: the worker's health-check key
        lapses by itself, and its own shutdown (the database, the HTTP client) must still run."""
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)  # as arq does: cancels what still runs
        if not self._pool:
            return
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(REDIS_SPARE_SECONDS):
                await self.pool.delete(self.health_check_key)
        try:
            if self.on_shutdown:
                await self.on_shutdown(self.ctx)
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(REDIS_SPARE_SECONDS):
                    await self.pool.close(close_connection_pool=True)
            self._pool = None
