"""The order of a queue's jobs: strict priority tiers, and within each a fair share for every owner and batch.

Workers take a queue's due jobs lowest score first. The feeder gives each job a score that is its batch's
priority tier plus a virtual finish tag (start-time fair queuing): a batch's next job is tagged one step of
`1 / weight` after its previous one, or after the tier's current virtual time when the batch was idle, so its
past idleness is no credit. A batch's weight is its owner's share split between the owner's batches that can run
now: two owners get half the capacity each whether one of them has one batch or twenty. A small batch submitted
behind a large one is therefore interleaved with it at once, not queued after its window (a batch submitted
from the command line names no owner and counts as one of its own); and every `urgent`
job goes before every `normal` one, which go before every `background` one.

The scores are far below any real time, so every job fed is due at once (arq takes jobs whose score is not in
the future); the tiers are ranges of scores wide enough that no tag of one reaches the next. The tags the feeder
has handed out live in a Redis hash beside the queue: losing it (a flush) only restarts the order at zero, as
the feeder re-feeds everything then anyway.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from redis.asyncio import Redis

from jobs.core.constants import FAIR_KEY
from jobs.core.states import BatchPriority

__all__ = ["TIER_BASE", "TIER_WIDTH", "FairQueue", "Runnable", "tier_of"]

# Where each tier's scores begin, and how wide each is: a tag grows by at most the number of batches an owner has
# per job fed, so a tier holds ~1e11 jobs' tags, and every score stays far below the epoch milliseconds arq
# compares it with (1.7e12 in 2026).
TIER_WIDTH = 2e11
TIER_BASE: dict[BatchPriority, float] = {
    BatchPriority.URGENT: 1e11,
    BatchPriority.NORMAL: 1e11 + TIER_WIDTH,
    BatchPriority.BACKGROUND: 1e11 + 2 * TIER_WIDTH,
}


def tier_of(score: float) -> BatchPriority | None:
    """The tier a job's score is in; None for a score outside every tier (a job fed before tiers existed)."""
    for priority, base in TIER_BASE.items():
        if base <= score < base + TIER_WIDTH:
            return priority
    return None


@dataclass(slots=True, frozen=True)
class Runnable:
    """A batch that can run now, as the fair queue weighs it."""

    batch_id: str
    # Whose it is: the API key's owner; "" for a batch submitted from the command line, which names no owner
    # and so counts as an owner of its own.
    owner: str
    priority: BatchPriority

    @property
    def share_holder(self) -> str:
        """Who the batch shares its tier's capacity as: its owner, or itself when it has none."""
        return f"owner:{self.owner}" if self.owner else f"batch:{self.batch_id}"


@dataclass(slots=True)
class FairQueue:
    """One feeder tick's view of a queue's order: `start`, then `scores` for each batch fed, then `save`."""

    redis: Redis
    queue: str
    _batches: dict[str, Runnable] = field(default_factory=dict)
    _steps: dict[str, float] = field(default_factory=dict)
    _tags: dict[str, float] = field(default_factory=dict)
    _now: dict[BatchPriority, float] = field(default_factory=dict)
    _issued: dict[BatchPriority, float] = field(default_factory=dict)
    _steps_before: dict[str, float] = field(default_factory=dict)
    _shares: dict[str, float] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return FAIR_KEY.format(queue=self.queue)

    async def start(self, runnable: list[Runnable]) -> None:
        """Read each tier's virtual time (the tag at the head of the queue, else the last one issued) and the
        runnable batches' last tags; weigh the batches by owner."""
        self._batches = {r.batch_id: r for r in runnable}
        per_owner = Counter((r.priority, r.share_holder) for r in runnable)
        # A batch's step is 1 / weight: its owner's batches that can run now, in its tier.
        self._steps = {r.batch_id: float(per_owner[(r.priority, r.share_holder)]) for r in runnable}
        holders = Counter(priority for priority, _ in per_owner)
        self._shares = {r.batch_id: 1 / (self._steps[r.batch_id] * holders[r.priority]) for r in runnable}
        tiers = list(TIER_BASE)
        async with self.redis.pipeline(transaction=False) as pipe:
            for priority in tiers:
                base = TIER_BASE[priority]
                pipe.zrangebyscore(self.queue, base, f"({base + TIER_WIDTH}", start=0, num=1, withscores=True)
            pipe.hmget(
                self.key,
                [f"_issued:{p.value}" for p in tiers]
                + list(self._batches)
                + [f"_step:{b}" for b in self._batches],
            )
            replies = await pipe.execute()
        stored = replies[-1]
        for i, priority in enumerate(tiers):
            issued = float(stored[i]) if stored[i] is not None else 0.0
            head = replies[i]
            self._issued[priority] = issued
            self._now[priority] = float(head[0][1]) - TIER_BASE[priority] if head else issued
        count = len(self._batches)
        tags, steps = stored[len(tiers) : len(tiers) + count], stored[len(tiers) + count :]
        self._tags = {b: float(raw) for b, raw in zip(self._batches, tags, strict=True) if raw is not None}
        self._steps_before = {
            b: float(raw) for b, raw in zip(self._batches, steps, strict=True) if raw is not None
        }

    def share(self, batch_id: str) -> float:
        """The part of its tier's capacity the batch is due (its owner's equal part, split between its batches):
        what the feeder sizes its window of queued jobs by."""
        return self._shares.get(batch_id, 1.0)

    def reweighed(self) -> list[str]:
        """The batches whose weight changed since their jobs were scored (another batch of their owner and tier
        started or ended): their queued jobs are to be scored again (`rescore`), or the old weights would hold
        for as long as those jobs wait."""
        return [b for b, before in self._steps_before.items() if self._steps.get(b) != before]

    def rescore(self, batch_id: str, count: int) -> list[float]:
        """New scores for a batch's `count` queued jobs, in their order, as if fed now at its present weight."""
        self._tags.pop(batch_id, None)
        return self.scores(batch_id, count)

    def scores(self, batch_id: str, count: int) -> list[float]:
        """The scores of a batch's next `count` jobs, in order; its tag moves on by as many steps."""
        batch = self._batches[batch_id]
        step = self._steps[batch_id]
        tag = max(self._now[batch.priority], self._tags.get(batch_id, 0.0))
        base = TIER_BASE[batch.priority]
        scores = []
        for _ in range(count):
            tag += step
            scores.append(base + min(tag, TIER_WIDTH - 1))
        self._tags[batch_id] = tag
        self._issued[batch.priority] = max(self._issued[batch.priority], tag)
        return scores

    async def save(self) -> None:
        """Keep the tags handed out, and forget those of batches that cannot run now."""
        async with self.redis.pipeline(transaction=False) as pipe:
            mapping: dict[str, float] = {f"_issued:{p.value}": v for p, v in self._issued.items()}
            mapping.update({b: t for b, t in self._tags.items() if b in self._batches})
            mapping.update({f"_step:{b}": s for b, s in self._steps.items() if b in self._tags})
            if mapping:
                pipe.hset(self.key, mapping=mapping)
            pipe.hkeys(self.key)
            replies = await pipe.execute()
        gone = [
            k.decode()
            for k in replies[-1]
            if not k.startswith(b"_issued:") and k.decode().removeprefix("_step:") not in self._batches
        ]
        if gone:
            await self.redis.hdel(self.key, *gone)  # type: ignore[misc]
