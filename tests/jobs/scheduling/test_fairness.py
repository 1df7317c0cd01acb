"""The order the feeder gives a queue's jobs: a fair share for each owner and batch, in strict priority tiers."""

from __future__ import annotations

from arq.connections import ArqRedis

from jobs.core.states import BatchPriority
from jobs.scheduling.fairness import TIER_BASE, FairQueue, Runnable, tier_of

NORMAL = BatchPriority.NORMAL


async def _feed(redis: ArqRedis, queue: str, runnable: list[Runnable], counts: dict[str, int]) -> None:
    """One feeder tick: `counts[batch]` more jobs of each batch, named `batch-N`, scored by the fair queue."""
    fair = FairQueue(redis, queue)
    await fair.start(runnable)
    for batch_id, count in counts.items():
        have = await redis.zcount(queue, "-inf", "+inf")
        scores = fair.scores(batch_id, count)
        await redis.zadd(queue, {f"{batch_id}-{have + i}": s for i, s in enumerate(scores)})
    await fair.save()


async def _taken(redis: ArqRedis, queue: str, count: int) -> list[str]:
    """The batches of the next `count` jobs a worker takes (lowest score first), taken out of the queue."""
    taken = [job.decode() for job in await redis.zrange(queue, 0, count - 1)]
    if taken:
        await redis.zrem(queue, *taken)
    return [job.rsplit("-", 1)[0] for job in taken]


async def test_a_small_batch_behind_a_large_one_is_interleaved_at_once(
    redis: ArqRedis, queue_name: str
) -> None:
    large = Runnable("large", "", NORMAL)
    await _feed(redis, queue_name, [large], {"large": 1000})
    assert await _taken(redis, queue_name, 100) == ["large"] * 100
    small = Runnable("small", "", NORMAL)
    await _feed(redis, queue_name, [large, small], {"small": 10})
    # Its ten jobs go out one for one with the large batch's, not after the 900 that were queued before it.
    assert (await _taken(redis, queue_name, 22)).count("small") == 10


async def test_owners_share_alike_however_many_batches_each_has(redis: ArqRedis, queue_name: str) -> None:
    many = [Runnable(f"alice-{i}", "alice", NORMAL) for i in range(4)]
    one = Runnable("bob", "bob", NORMAL)
    await _feed(redis, queue_name, [*many, one], {**{b.batch_id: 200 for b in many}, "bob": 200})
    served = await _taken(redis, queue_name, 200)
    assert 95 <= served.count("bob") <= 105
    for batch in many:
        assert 22 <= served.count(batch.batch_id) <= 28


async def test_every_urgent_job_goes_before_every_normal_one_and_those_before_background_ones(
    redis: ArqRedis, queue_name: str
) -> None:
    nightly = Runnable("nightly", "", BatchPriority.BACKGROUND)
    await _feed(redis, queue_name, [nightly], {"nightly": 100})
    labels = Runnable("labels", "", NORMAL)
    hot = Runnable("hot", "", BatchPriority.URGENT)
    await _feed(redis, queue_name, [nightly, labels, hot], {"labels": 20, "hot": 5})
    assert await _taken(redis, queue_name, 30) == ["hot"] * 5 + ["labels"] * 20 + ["nightly"] * 5
    scores = [s for _, s in await redis.zrange(queue_name, 0, -1, withscores=True)]
    assert {tier_of(s) for s in scores} == {BatchPriority.BACKGROUND}
    # Every score is due at once (arq takes jobs whose score is not in the future), far below any real time.
    assert max(scores) < 1e12
    assert min(TIER_BASE.values()) > 0


async def test_a_batch_that_was_idle_gets_no_credit_for_it(redis: ArqRedis, queue_name: str) -> None:
    large, idle = Runnable("large", "", NORMAL), Runnable("idle", "", NORMAL)
    await _feed(redis, queue_name, [large, idle], {"large": 500, "idle": 5})
    await _taken(redis, queue_name, 300)
    # Back with more work after the others were served for a while: it shares from now on, it does not jump
    # ahead of everything queued by as much as it was away.
    await _feed(redis, queue_name, [large, idle], {"idle": 100})
    assert 8 <= (await _taken(redis, queue_name, 20)).count("idle") <= 12


async def test_batches_that_stopped_are_forgotten_and_a_lost_state_restarts_the_order(
    redis: ArqRedis, queue_name: str
) -> None:
    first, second = Runnable("first", "", NORMAL), Runnable("second", "", NORMAL)
    await _feed(redis, queue_name, [first, second], {"first": 3, "second": 3})
    await _feed(redis, queue_name, [second], {})
    assert sorted(k.decode() for k in await redis.hkeys(f"{queue_name}:fair") if not k.startswith(b"_")) == [
        "second"
    ]
    await redis.flushdb()
    await _feed(redis, queue_name, [first], {"first": 2})
    assert await _taken(redis, queue_name, 5) == ["first", "first"]
